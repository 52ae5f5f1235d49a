"""Model zoo: a registry of CNN families, built by name with ``create_model``.

Importing this package registers every family.
"""

from cnnlab.models import (  # noqa: F401  (importing a family module registers its models)
    airbench,
    cifar_resnet,
    mobilenet,
    resnet,
    resnet9,
    simple,
    simple_resnet,
    vgg,
)
from cnnlab.models.compat import get_model_info, get_target_layer_for_gradcam, register_seed_aliases
from cnnlab.models.hooks import InitFromData
from cnnlab.models.pooling import LogSumExpPool2d
from cnnlab.models.registry import (
    ModelInfo,
    UnknownModelError,
    create_deterministic_model,
    create_model,
    gradcam_layer,
    list_models,
    load_weights,
    masking_layer,
    meta_device,
    model_family,
    model_info,
    model_options,
    output_shape,
    register_alias,
    register_model,
)

register_seed_aliases()

__all__ = [
    "InitFromData",
    "LogSumExpPool2d",
    "ModelInfo",
    "UnknownModelError",
    "create_deterministic_model",
    "create_model",
    "get_model_info",
    "get_target_layer_for_gradcam",
    "gradcam_layer",
    "list_models",
    "load_weights",
    "masking_layer",
    "meta_device",
    "model_family",
    "model_info",
    "model_options",
    "output_shape",
    "register_alias",
    "register_model",
]
