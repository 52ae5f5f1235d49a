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
from cnnlab.models.registry import (
    ModelInfo,
    UnknownModelError,
    create_deterministic_model,
    create_model,
    gradcam_layer,
    list_models,
    masking_layer,
    meta_device,
    model_family,
    model_info,
    output_shape,
    register_model,
)

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "create_deterministic_model",
    "create_model",
    "gradcam_layer",
    "list_models",
    "masking_layer",
    "meta_device",
    "model_family",
    "model_info",
    "output_shape",
    "register_model",
]
