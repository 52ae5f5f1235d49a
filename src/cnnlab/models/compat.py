"""The seeds' own names for cnnlab's models, options and helpers, in one place.

- Model names: seed 000's creators (``construct_rn9``, ``construct_resnet9_paper``, ``ResNet9TableArch``,
  ``make_airbench94_adapted``), seed 001's ``ResNet20``..``ResNet110``, seed 004's ``ResNet4StageCustom``
  and seed 003's ``*_224`` names, which also imply their input resolution (224 px).
- Option names: ``width_multiplier`` (-> ``width``), ``final_layer_scale`` (-> ``output_scale``),
  ``pooling_epsilon`` (-> ``lse_eps``), ``use_batchnorm`` (-> ``batchnorm``), ``use_dropout`` (-> ``dropout``
  0.5 or 0, the seed's Dropout(0.5)), ``num_blocks_per_stage`` (-> ``blocks``). ``bias_scale`` is an option
  of the ResNet-9 family itself (it scales the zero-initialised conv biases, as in the seed).
- Helpers with the seeds' signatures: ``create_deterministic_model(master_seed=, creator_func=,
  instance_id=, num_classes=)``, ``get_model_info`` (with ``params_millions``) and
  ``get_target_layer_for_gradcam``.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from cnnlab.models import registry
from cnnlab.models.registry import create_deterministic_model  # already takes the seed's keywords

__all__ = ["OPTION_ALIASES", "SEED_ALIASES", "create_deterministic_model", "get_model_info",
           "get_target_layer_for_gradcam", "register_seed_aliases", "translate_options"]

SEED_ALIASES: dict[str, tuple[str, dict[str, Any], int | None]] = {
    # seed 000 (ResNet-9 / MAGIC guide)
    "construct_rn9": ("resnet9", {}, None),
    "construct_resnet9": ("resnet9", {}, None),
    "construct_resnet9_paper": ("resnet9_paper", {}, None),
    "ResNet9TableArch": ("resnet9_table", {}, None),
    "make_airbench94_adapted": ("airbench94_adapted", {}, None),
    # seed 001 (ResNet ablation study)
    **{f"ResNet{d}": (f"resnet{d}", {}, None) for d in (20, 32, 44, 56, 110)},
    # seed 004 (SimpleResNet populations)
    "ResNet4StageCustom": ("resnet4stage", {}, None),
    # seed 003 (ResoMap): the name says the resolution
    **{f"{n}_224": (n, {}, 224) for n in ("vgg11", "vgg13", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101",
                                          "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                                          "simple_cnn", "tiny_cnn")},
    "mobilenet_v2_small_224": ("mobilenet_v2", {"width_mult": 0.75}, 224),
}

# seed option name -> (cnnlab option name, value conversion)
OPTION_ALIASES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "width_multiplier": ("width", lambda v: v),
    "final_layer_scale": ("output_scale", lambda v: v),
    "pooling_epsilon": ("lse_eps", lambda v: v),
    "use_batchnorm": ("batchnorm", lambda v: v),
    "use_dropout": ("dropout", lambda v: (0.5 if v else 0.0) if isinstance(v, bool) else v),
    "num_blocks_per_stage": ("blocks", lambda v: v),
}


def translate_options(options: dict[str, Any], accepted: list[str] | None) -> dict[str, Any]:
    """Rename the seeds' option names to cnnlab's where the model takes the cnnlab name but not the seed's."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        alias = OPTION_ALIASES.get(key)
        if alias is None or accepted is None or key in accepted or alias[0] not in accepted:
            out[key] = value
            continue
        target, convert = alias
        if target in options:
            raise ValueError(f"options {key!r} and {target!r} are the same option (the seed's name and cnnlab's); give one")
        if key == "use_dropout" and not isinstance(value, bool):
            raise ValueError(f"option 'use_dropout' must be true or false, got {value!r}")
        out[target] = convert(value)
    return out


def register_seed_aliases() -> None:
    for alias, (target, options, resolution) in SEED_ALIASES.items():
        registry.register_alias(alias, target, resolution=resolution, **options)


def get_model_info(model: nn.Module) -> dict[str, float | int]:
    """Seed 003's ``get_model_info``: total_params, trainable_params, params_millions, model_size_mb."""
    info = registry.model_info(model)
    return {"total_params": info.total_params, "trainable_params": info.trainable_params,
            "params_millions": info.total_params / 1e6, "model_size_mb": info.size_mb}


def get_target_layer_for_gradcam(model: nn.Module) -> nn.Module:
    """Seed 003's name for :func:`cnnlab.models.gradcam_layer` (the model's last conv block)."""
    return registry.gradcam_layer(model)
