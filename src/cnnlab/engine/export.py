"""Export a trained model to a file another program can load, and prove the file computes what the model does.

Three formats, each checked by loading the written file back and comparing its outputs on a real batch:

- ``state_dict``: ``torch.save(model.state_dict())`` - for ``create_model(...).load_state_dict(...)``;
- ``exported``: a ``torch.export`` program (``.pt2``, ``torch.export.load(path).module()``), batch size dynamic;
- ``onnx``: ONNX through torch's dynamo exporter, checked with onnxruntime (``pip install 'cnnlab[onnx]'``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from cnnlab.utils.io import atomic_path

FORMATS = ("state_dict", "exported", "onnx")
SUFFIX = {"state_dict": ".pt", "exported": ".pt2", "onnx": ".onnx"}


class ExportError(RuntimeError):
    """The model could not be exported in the asked format, or the file does not reproduce its outputs."""


@dataclass
class ExportReport:
    """What was written and how closely the written file reproduces the model's outputs."""

    format: str
    path: str
    bytes: int
    batch_shape: list[int]
    max_abs_diff: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_model(model: nn.Module, example: torch.Tensor, fmt: str, path: str | os.PathLike, *,
                 build: Callable[[], nn.Module] | None = None, atol: float = 1e-4, rtol: float = 1e-4) -> ExportReport:
    """Write ``model`` (put in eval mode) to ``path`` as ``fmt`` and check the file on the batch ``example``.

    Args:
        model (nn.Module): The trained model. It is exported in eval mode on the CPU.
        example (Tensor): A batch of real inputs (N x C x H x W, N >= 2 so the batch dimension stays dynamic).
        fmt (str): One of ``state_dict``, ``exported``, ``onnx``.
        path (path): The file to write; written to a temporary file and renamed once the check passed.
        build (callable, optional): Makes a fresh model of the same architecture, needed to check a
            ``state_dict`` file (its weights are loaded into it with ``strict=True``). Default: a deep copy
            of ``model`` with its parameters zeroed.
        atol, rtol (float, optional): Tolerances of the output check, scaled by the outputs' magnitude:
            ``max|file - model| <= atol + rtol * max|model|``. Default: 1e-4 each.

    Returns:
        ExportReport: the path, size, batch shape and the largest output difference found.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if example.dim() != 4 or example.shape[0] < 2:
        raise ValueError(f"example must be a batch N x C x H x W with N >= 2, got shape {tuple(example.shape)}")
    model = model.to("cpu").eval()
    example = example.to("cpu", torch.float32)
    with torch.no_grad():
        expected = model(example)
    path = Path(path)
    with atomic_path(path) as tmp:
        reloaded = _WRITERS[fmt](model, example, tmp, build)
        diff = float((reloaded.float() - expected.float()).abs().max())
        tolerance = atol + rtol * float(expected.abs().max())
        if not diff <= tolerance:
            raise ExportError(f"the {fmt} file does not reproduce the model: max |difference| {diff:.3g} "
                              f"> tolerance {tolerance:.3g} on a batch of {example.shape[0]}; nothing was written")
    return ExportReport(fmt, str(path), path.stat().st_size, list(example.shape), diff, tolerance)


def _state_dict(model: nn.Module, example: torch.Tensor, tmp: Path, build: Callable[[], nn.Module] | None) -> torch.Tensor:
    torch.save(model.state_dict(), tmp)
    fresh = build() if build is not None else _zeroed_copy(model)
    fresh.load_state_dict(torch.load(tmp, map_location="cpu", weights_only=True), strict=True)
    with torch.no_grad():
        return fresh.eval()(example)


def _zeroed_copy(model: nn.Module) -> nn.Module:
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for t in [*fresh.parameters(), *fresh.buffers()]:
            if t.is_floating_point():
                t.zero_()
    return fresh


def _dynamic_batch(example: torch.Tensor) -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1)},)


def _exported(model: nn.Module, example: torch.Tensor, tmp: Path, build: Any) -> torch.Tensor:
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(example))
    except Exception as e:  # torch.export names the construct it cannot trace
        raise ExportError(f"torch.export cannot trace this model: {type(e).__name__}: {_first_line(e)}") from None
    with open(tmp, "wb") as f:
        torch.export.save(program, f)
    with open(tmp, "rb") as f:
        loaded = torch.export.load(f)
    with torch.no_grad():
        return loaded.module()(example)


def _onnx(model: nn.Module, example: torch.Tensor, tmp: Path, build: Any) -> torch.Tensor:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'cnnlab[onnx]'") from None
    import contextlib
    import io
    import warnings

    try:  # the exporter prints its progress to stdout: keep it out of the caller's (e.g. --json) output
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=_dynamic_batch(example),
                                        input_names=["images"], output_names=["logits"], verbose=False)
            if program is None:  # dynamo=True returns the program; None would mean torch wrote nothing
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(tmp))
    except Exception as e:
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {_first_line(e)}") from None
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"images": example.numpy()})
    return torch.from_numpy(out)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


_WRITERS = {"state_dict": _state_dict, "exported": _exported, "onnx": _onnx}
