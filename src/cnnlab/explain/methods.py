"""Attribution methods, one class per method behind a small registry (captum does the differentiation).

Every method maps a batch of model inputs ``x`` (N×C×H×W, already normalised) and one target class per
image to an attribution at input resolution: N×C×H×W for input-space methods (IG, saliency,
SmoothGrad), N×1×H×W for Grad-CAM (upsampled from the layer grid unless ``upsample=False``).
:func:`to_map` reduces either to one N×H×W map per image (sum over channels).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import gradcam_layer
from cnnlab.utils.registry import Registry
from cnnlab.utils.seeding import derive_seed, fork_rng_seeded, make_generator


class AttributionMethod:
    """Base class: ``attribute(x, target)`` -> attribution at input resolution; ``settings()`` for logs."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # short human title for plots
    signed: ClassVar[bool] = True  # whether maps can be negative (decides the colour map)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def calibrate(self, x: torch.Tensor) -> None:
        """Fix data-dependent settings from the whole image set once (so chunking cannot change them)."""

    def settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


METHODS: Registry[type[AttributionMethod]] = Registry(
    "attribution method", error=KeyError, hint="`cnnlab explain methods` lists them with their options.")


def register_method(name: str) -> Callable[[type[AttributionMethod]], type[AttributionMethod]]:
    """Class decorator: register an :class:`AttributionMethod` subclass under ``name`` (a taken name is refused)."""

    def deco(cls: type[AttributionMethod]) -> type[AttributionMethod]:
        METHODS.register(name, cls)  # a taken name is refused
        cls.name = name
        return cls

    return deco


def list_methods() -> list[str]:
    return sorted(METHODS.names())


def method_class(name: str) -> type[AttributionMethod]:
    """The registered class of ``name``; an unknown name is a KeyError naming the closest ones."""
    return METHODS.get(name)


def method_options(name: str) -> list[str]:
    """The keyword options a method accepts (besides the model)."""
    params = inspect.signature(method_class(name).__init__).parameters
    return [p for p in params if p not in ("self", "model")]


def create_method(name: str, model: nn.Module, **options: Any) -> AttributionMethod:
    """Build a registered method for ``model``; unknown options raise ValueError naming the accepted ones."""
    accepted = method_options(name)
    bad = [k for k in options if k not in accepted]
    if bad:
        raise ValueError(f"method {name!r} does not accept option(s) {', '.join(map(repr, bad))}; "
                         f"accepted: {', '.join(accepted)}")
    return method_class(name)(model, **options)


def to_map(attribution: torch.Tensor) -> torch.Tensor:
    """N×C×H×W (or N×1×h×w) attribution -> N×H×W map: the sum over channels (signed)."""
    if attribution.ndim != 4:
        raise ValueError(f"attribution must be N×C×H×W, got shape {tuple(attribution.shape)}")
    return attribution.sum(dim=1)


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``x`` that requires grad (captum would set it on the caller's tensor, with a warning)."""
    return x.detach().requires_grad_(True)


# --- Grad-CAM -------------------------------------------------------------------------------------------

@register_method("gradcam")
class GradCAM(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017) on the model's last conv block, via captum's LayerGradCam.

    ``layer``: a module or its dotted name (default: ``gradcam_layer(model)``); ``relu`` keeps only
    positive evidence (the paper's choice; captum's default is off); ``upsample`` brings the layer-grid
    map to the input size with ``LayerAttribution.interpolate``.
    """

    label = "Grad-CAM"

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None, relu: bool = True, upsample: bool = True,
                 interpolate_mode: str = "bilinear") -> None:
        from captum.attr import LayerGradCam

        super().__init__(model)
        if interpolate_mode not in ("nearest", "bilinear", "bicubic", "area"):
            raise ValueError(f"interpolate_mode must be nearest, bilinear, bicubic or area, got {interpolate_mode!r}")
        if isinstance(layer, str):
            try:
                layer = model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"gradcam layer {layer!r} is not a submodule of {type(model).__name__}") from None
        self.layer = layer if layer is not None else gradcam_layer(model)
        self.layer_name = next((n for n, m in model.named_modules() if m is self.layer), type(self.layer).__name__)
        self.relu = bool(relu)
        self.upsample = bool(upsample)
        self.interpolate_mode = interpolate_mode
        self._captum = LayerGradCam(model, self.layer)

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return not self.relu

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerAttribution

        cam = self._captum.attribute(x, target=target, relu_attributions=self.relu)
        if self.upsample and tuple(cam.shape[-2:]) != tuple(x.shape[-2:]):
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), self.interpolate_mode)
        return cam.detach()

    def settings(self) -> dict[str, Any]:
        return {"layer": self.layer_name, "relu": self.relu, "upsample": self.upsample,
                "interpolate_mode": self.interpolate_mode}


# --- Integrated Gradients -------------------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W (replicate padding, kernel radius ceil(3 sigma))."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _zeros_baseline(x: torch.Tensor, method: "IntegratedGradientsMethod") -> torch.Tensor:
    return torch.zeros_like(x)


def _blur_baseline(x: torch.Tensor, method: "IntegratedGradientsMethod") -> torch.Tensor:
    sigma = method.blur_sigma if method.blur_sigma is not None else max(x.shape[-2:]) / 8.0
    return gaussian_blur(x, sigma)


def _mean_baseline(x: torch.Tensor, method: "IntegratedGradientsMethod") -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()


def _uniform_baseline(x: torch.Tensor, method: "IntegratedGradientsMethod") -> torch.Tensor:
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    gen = make_generator(method.seed, "explain/ig/uniform-baseline")
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return lo + u * (hi - lo)


# Baselines, by name: (input batch, method) -> baseline of the same shape.
BASELINES: dict[str, Callable[[torch.Tensor, "IntegratedGradientsMethod"], torch.Tensor]] = {
    "zeros": _zeros_baseline,      # zero input = the dataset mean colour for normalised inputs
    "blur": _blur_baseline,        # Gaussian-blurred input (sigma = blur_sigma or max(H, W) / 8)
    "mean": _mean_baseline,        # each image's own per-channel mean colour, flat
    "uniform": _uniform_baseline,  # seeded uniform noise within the batch's per-channel range
}


@register_method("ig")
class IntegratedGradientsMethod(AttributionMethod):
    """Integrated Gradients (Sundararajan et al. 2017) from a named baseline: zeros, blur, mean or uniform."""

    label = "Integrated Gradients"

    def __init__(self, model: nn.Module, baseline: str = "zeros", n_steps: int = 50, internal_batch_size: int | None = 256,
                 integration: str = "gausslegendre", blur_sigma: float | None = None, seed: int = 0) -> None:
        from captum.attr import IntegratedGradients

        super().__init__(model)
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if integration not in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
            raise ValueError(f"integration must be gausslegendre or riemann_{{left,right,middle,trapezoid}}, got {integration!r}")
        self.baseline = baseline
        self.n_steps = int(n_steps)
        self.internal_batch_size = internal_batch_size
        self.integration = integration
        self.blur_sigma = blur_sigma
        self.seed = int(seed)
        self._captum = IntegratedGradients(model)

    def baselines(self, x: torch.Tensor) -> torch.Tensor:
        return BASELINES[self.baseline](x, self)

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(
            x, baselines=self.baselines(x), target=target, n_steps=self.n_steps, method=self.integration,
            internal_batch_size=self.internal_batch_size,
        ).detach()

    def settings(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "n_steps": self.n_steps, "internal_batch_size": self.internal_batch_size,
                "integration": self.integration, "blur_sigma": self.blur_sigma, "seed": self.seed}


# --- Saliency and SmoothGrad ----------------------------------------------------------------------------

@register_method("saliency")
class SaliencyMethod(AttributionMethod):
    """Vanilla gradient saliency (Simonyan et al. 2014): |d score / d input| by default."""

    label = "Saliency"

    def __init__(self, model: nn.Module, abs: bool = True) -> None:  # noqa: A002 (captum's name)
        from captum.attr import Saliency

        super().__init__(model)
        self.abs = bool(abs)
        self._captum = Saliency(model)

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return not self.abs

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(_grad_input(x), target=target, abs=self.abs).detach()

    def settings(self) -> dict[str, Any]:
        return {"abs": self.abs}


@register_method("smoothgrad")
class SmoothGrad(AttributionMethod):
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over Gaussian-noised copies (captum NoiseTunnel).

    The noise standard deviation is always explicit: ``stdev`` in model-input units, or, if not given,
    ``noise_level`` × (max - min) of the images passed to :meth:`calibrate` (the paper's 10-20 %).
    Noise is drawn under a seeded RNG fork, so repeated calls give the same maps.
    """

    label = "SmoothGrad"

    def __init__(self, model: nn.Module, stdev: float | None = None, noise_level: float = 0.15, nt_samples: int = 25,
                 nt_samples_batch_size: int | None = None, abs: bool = True, seed: int = 0) -> None:  # noqa: A002
        from captum.attr import NoiseTunnel, Saliency

        super().__init__(model)
        if stdev is not None and stdev <= 0:
            raise ValueError(f"stdev must be > 0, got {stdev}")
        if noise_level <= 0:
            raise ValueError(f"noise_level must be > 0, got {noise_level}")
        if int(nt_samples) < 1:
            raise ValueError(f"nt_samples must be >= 1, got {nt_samples}")
        self.stdev = None if stdev is None else float(stdev)
        self.noise_level = float(noise_level)
        self.nt_samples = int(nt_samples)
        self.nt_samples_batch_size = nt_samples_batch_size
        self.abs = bool(abs)
        self.seed = int(seed)
        self._calls = 0
        self._captum = NoiseTunnel(Saliency(model))

    @property
    def signed(self) -> bool:  # type: ignore[override]
        return not self.abs

    def calibrate(self, x: torch.Tensor) -> None:
        if self.stdev is None:
            self.stdev = self.noise_level * float(x.max() - x.min())
            if self.stdev <= 0:
                raise ValueError("cannot derive a SmoothGrad stdev from constant images; pass stdev explicitly")

    def attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.stdev is None:
            self.calibrate(x)
        seed = derive_seed(self.seed, f"explain/smoothgrad/{self._calls}")
        self._calls += 1
        with fork_rng_seeded(seed):
            out = self._captum.attribute(_grad_input(x), nt_type="smoothgrad", nt_samples=self.nt_samples, stdevs=self.stdev,
                                         nt_samples_batch_size=self.nt_samples_batch_size, target=target, abs=self.abs)
        return out.detach()

    def settings(self) -> dict[str, Any]:
        return {"stdev": self.stdev, "noise_level": self.noise_level, "nt_samples": self.nt_samples,
                "abs": self.abs, "seed": self.seed}


__all__ = [
    "AttributionMethod", "BASELINES", "GradCAM", "METHODS", "IntegratedGradientsMethod", "SaliencyMethod", "SmoothGrad",
    "create_method", "gaussian_blur", "list_methods", "method_class", "method_options", "register_method", "to_map",
]
