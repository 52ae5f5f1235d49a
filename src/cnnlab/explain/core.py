"""Explain a batch of images with several methods: targets, chunked attribution, faithfulness metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from cnnlab.explain.methods import AttributionMethod, create_method, to_map
from cnnlab.utils.seeding import derive_seed, fork_rng_seeded

TARGET_MODES = ("pred", "true")

#: ``progress(n)``: called after each chunk with the number of images it covered (for a ProgressLog).
Progress = Optional[Callable[[int], None]]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Eval-mode logits for ``x`` in chunks of ``batch_size``."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def resolve_targets(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, mode: str | int) -> torch.Tensor:
    """Target class per image: ``"pred"`` (the model's argmax), ``"true"`` (``labels``) or one fixed class."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        k = predict_logits(model, x[:1]).shape[1]
        if not 0 <= mode < k:
            raise ValueError(f"target class {mode} is out of range: the model has {k} classes (0..{k - 1})")
        return torch.full((x.shape[0],), mode, dtype=torch.long, device=x.device)
    if mode == "pred":
        return predict_logits(model, x).argmax(dim=1)
    if mode == "true":
        if labels is None:
            raise ValueError("target mode 'true' needs labels")
        return labels.to(device=x.device, dtype=torch.long)
    raise ValueError(f"target must be one of {', '.join(TARGET_MODES)} or a class index, got {mode!r}")


def build_methods(model: nn.Module, names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, AttributionMethod]:
    """Create the named methods; ``options[name]`` holds each method's keyword options."""
    options = dict(options or {})
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ValueError(f"options given for method(s) {', '.join(map(repr, unknown))} that are not selected "
                         f"(selected: {', '.join(names)})")
    return {n: create_method(n, model, **dict(options.get(n, {}))) for n in names}


@dataclass
class Explanations:
    """Attributions for N images: ``attributions[method]`` at input resolution, ``maps[method]`` N×H×W."""

    targets: torch.Tensor
    attributions: dict[str, torch.Tensor]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        return {k: to_map(v) for k, v in self.attributions.items()}


def explain(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, methods: Mapping[str, AttributionMethod],
            batch_size: int = 16, progress: Progress = None) -> Explanations:
    """Run every method on ``x`` (N×C×H×W model inputs) for one target per image, ``batch_size`` images at a time.

    ``progress(n)`` is called after each chunk of ``n`` images (N × len(methods) images in all)."""
    if model.training:
        raise ValueError("explain() needs the model in eval mode (call model.eval()); BN statistics would move")
    if targets.shape != (x.shape[0],):
        raise ValueError(f"targets must have shape ({x.shape[0]},), got {tuple(targets.shape)}")
    out: dict[str, torch.Tensor] = {}
    for name, method in methods.items():
        method.calibrate(x)
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            chunks.append(method.attribute(x[i:i + batch_size], targets[i:i + batch_size]))
            if progress is not None:
                progress(chunks[-1].shape[0])
        out[name] = torch.cat(chunks).float().cpu()
    return Explanations(targets.cpu(), out, {n: m.settings() for n, m in methods.items()})


# --- Faithfulness (captum.metrics) ----------------------------------------------------------------------

def _first(t: Any) -> torch.Tensor:
    return t[0] if isinstance(t, tuple) else t


def faithfulness(model: nn.Module, method: AttributionMethod, x: torch.Tensor, targets: torch.Tensor,
                 attributions: torch.Tensor | None = None, *, n_perturb_samples: int = 10, infidelity_std: float = 0.1,
                 sensitivity_radius: float = 0.02, seed: int = 0) -> dict[str, torch.Tensor]:
    """captum's infidelity (Gaussian perturbations, std ``infidelity_std``, normalised: scale-free) and
    max-sensitivity (uniform perturbations of radius ``sensitivity_radius``), one value per image.

    Both are lower-is-better. Grad-CAM's one-channel map broadcasts over the input channels. All noise
    is drawn under a seeded RNG fork.
    """
    from captum.metrics import infidelity, sensitivity_max

    if attributions is None:
        method.calibrate(x)
        attributions = method.attribute(x, targets)
    attributions = attributions.to(x.device, x.dtype)
    if tuple(attributions.shape[-2:]) != tuple(x.shape[-2:]):  # e.g. Grad-CAM with upsample=False
        attributions = torch.nn.functional.interpolate(attributions, size=tuple(x.shape[-2:]), mode="bilinear")

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(inputs) * infidelity_std
        return noise, inputs - noise

    def explanation(inputs: Any, target: torch.Tensor) -> tuple[torch.Tensor]:
        return (method.attribute(_first(inputs), target),)

    with fork_rng_seeded(derive_seed(seed, f"explain/infidelity/{method.name}")):
        inf = infidelity(model, perturb, x, attributions, target=targets, n_perturb_samples=n_perturb_samples,
                         normalize=True)
    with fork_rng_seeded(derive_seed(seed, f"explain/sensitivity/{method.name}")):
        sens = sensitivity_max(explanation, x, perturb_radius=sensitivity_radius, n_perturb_samples=n_perturb_samples,
                               target=targets)
    return {"infidelity": inf.detach().float().cpu(), "sensitivity_max": sens.detach().float().cpu()}


def faithfulness_table(model: nn.Module, methods: Mapping[str, AttributionMethod], x: torch.Tensor,
                       targets: torch.Tensor, expl: Explanations | None = None, batch_size: int = 16,
                       progress: Progress = None, **kwargs: Any) -> dict[str, dict[str, float]]:
    """Mean (and std) of infidelity and max-sensitivity per method over the images (``progress`` as in
    :func:`explain`)."""
    table: dict[str, dict[str, float]] = {}
    for name, method in methods.items():
        parts: dict[str, list[torch.Tensor]] = {"infidelity": [], "sensitivity_max": []}
        for i in range(0, x.shape[0], batch_size):
            attr = None if expl is None else expl.attributions[name][i:i + batch_size]
            res = faithfulness(model, method, x[i:i + batch_size], targets[i:i + batch_size], attr, **kwargs)
            for k, v in res.items():
                parts[k].append(v)
            if progress is not None:
                progress(res["infidelity"].shape[0])
        row: dict[str, float] = {}
        for k, vs in parts.items():
            v = torch.cat(vs)
            row[f"{k}_mean"] = float(v.mean())
            row[f"{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        table[name] = row
    return table


__all__ = ["Explanations", "Progress", "TARGET_MODES", "build_methods", "explain", "faithfulness", "faithfulness_table",
           "predict_logits", "resolve_targets"]
