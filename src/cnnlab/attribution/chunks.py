"""MAGIC over many targets as independent chunks: one resumable task per chunk, merged into one scores file.

::

    RUN_DIR/magic_chunks/plan.json          the request every chunk belongs to (targets, chunk size, provenance)
    RUN_DIR/magic_chunks/chunk-00001.pt     scores of chunk 1 (targets[0:chunk]), written atomically when done

Each chunk replays the run for its own targets; its measurement is evaluated on the whole target list and
its columns selected (:func:`~cnnlab.attribution.magic.compute_magic`'s ``batch_targets``), so the merged
scores are bit for bit those of one ``compute_magic`` over all targets. A chunk file carries its provenance
(config digest, measurement, dtype, replay settings, its target and train indices); the merge refuses any
chunk that does not match, so a chunk computed under other settings is never reused.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch

from cnnlab.attribution.magic import MagicResult, compute_magic, prepare_config
from cnnlab.attribution.measures import Measurement, MeasureFn, get_measurement
from cnnlab.attribution.replay import ReplayStats
from cnnlab.attribution.scores import Scores
from cnnlab.data import ImageDataset
from cnnlab.engine.config import RunConfig
from cnnlab.engine.rundir import config_digest
from cnnlab.engine.step import TrainState
from cnnlab.engine.trainer import load_checkpoint
from cnnlab.utils.io import save_torch_atomic, write_json_atomic
from cnnlab.utils.tagged import load_tagged

CHUNK_FORMAT = "cnnlab-magic-chunk-v1"
CHUNK_DIR = "magic_chunks"


def matches_checkpoint(run_dir: str | Path, state: TrainState | None, dtype: torch.dtype) -> bool | None:
    """Whether a replay's final ``state`` is bitwise the run's ``checkpoints/last.pt`` (None: nothing to compare)."""
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if state is None or dtype != torch.float32 or not path.is_file():
        return None
    saved = load_checkpoint(path)["state"]["params"]
    return all(torch.equal(saved[n], p.detach().cpu()) for n, p in state.params.items())


def split_targets(targets: Sequence[int], chunk: int) -> list[list[int]]:
    """``targets`` in consecutive chunks of ``chunk`` (the last one may be shorter)."""
    if chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    t = [int(i) for i in targets]
    return [t[i:i + chunk] for i in range(0, len(t), chunk)]


class MagicChunks:
    """The chunks of one MAGIC request on the run in ``run_dir``.

    Args:
        run_dir (str | Path): The analysis run directory (its ``config.yaml`` is the run explained).
        config (RunConfig): The run's config (prepared for MAGIC here).
        targets (sequence of int): Test targets, in column order of the merged scores.
        chunk (int): Targets per chunk (per task).
        measure (str | Measurement | callable, optional): The measurement phi. Default: "loss".
        checkpointing (str, optional): log | sqrt | all (see :class:`~cnnlab.attribution.replay.Replay`).
            Default: "log".
        tree_k (int, optional): Chunks per level of the log tree. Default: 4.
        dtype (torch.dtype, optional): Replay dtype. Default: torch.float32.
        vjp (str, optional): auto | batched | looped. Default: "auto".
        offload (bool, optional): Keep stored states on the CPU. Default: False.
        compile (bool, optional): Reverse with a torch.compile'd VJP. Default: False.
        compile_chunk (int, optional): Targets per compiled VJP call. Default: 4.
        dataset (ImageDataset, optional): The run's dataset (loaded by name when None). Default: None.

    Raises:
        ValueError: ``run_dir`` already holds chunks of another request (rerun with ``force``).
    """

    def __init__(self, run_dir: str | Path, config: RunConfig, targets: Sequence[int], chunk: int, *,
                 measure: Union[str, Measurement, MeasureFn] = "loss", checkpointing: str = "log", tree_k: int = 4,
                 dtype: torch.dtype = torch.float32, vjp: str = "auto", offload: bool = False,
                 compile: bool = False, compile_chunk: int = 4, dataset: ImageDataset | None = None,
                 force: bool = False):
        self.run_dir = Path(run_dir)
        self.config = prepare_config(config)
        self.targets = [int(i) for i in targets]
        if not self.targets:
            raise ValueError("targets: at least one test example is needed")
        self.chunks = split_targets(self.targets, chunk)
        self.chunk = chunk
        self.measure = measure
        self.measurement = get_measurement(measure).name
        self.dtype = dtype
        self.kw: dict[str, Any] = dict(checkpointing=checkpointing, tree_k=tree_k, dtype=dtype, vjp=vjp, offload=offload,
                       compile=compile, compile_chunk=compile_chunk)
        self.dataset = dataset
        self.dir = self.run_dir / CHUNK_DIR
        self.provenance: dict[str, Any] = {
            "config": config_digest(self.config.to_dict()), "measurement": self.measurement,
            "dtype": str(dtype).replace("torch.", ""), "checkpointing": checkpointing, "tree_k": tree_k,
            "vjp": vjp, "compile": compile, "targets": self.targets, "chunk": chunk}
        if force and self.dir.is_dir() and not self.dir.is_symlink():
            shutil.rmtree(self.dir)
        self._check_plan()

    def __len__(self) -> int:
        return len(self.chunks)

    def _check_plan(self) -> None:
        path = self.dir / "plan.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: unreadable chunk plan ({e}); rerun with --force") from None
            bad = [k for k, v in self.provenance.items() if old.get(k) != v]
            if bad:
                shown = ", ".join(f"{k} ({old.get(k)!r} there, {self.provenance[k]!r} asked)" if k != "targets"
                                  else "targets" for k in bad)
                raise ValueError(f"{self.dir} holds MAGIC chunks of another request (differs at {shown}); they are "
                                 "never reused: rerun with --force to recompute them, or pick another --out")
        else:
            write_json_atomic(path, self.provenance)

    def path(self, k: int) -> Path:
        """The file of chunk ``k`` (1-based, as array task ids are)."""
        return self.dir / f"chunk-{k:05d}.pt"

    def pending(self) -> list[int]:
        """Chunks (1-based) without a file."""
        return [k for k in range(1, len(self) + 1) if not self.path(k).is_file()]

    def _check_index(self, k: int) -> None:
        if not 1 <= k <= len(self):
            raise ValueError(f"--index {k} is out of range: this request has chunks 1..{len(self)}")

    def compute_one(self, k: int, progress: Callable[[int, int], None] | None = None) -> bool:
        """Compute chunk ``k`` (1-based) unless its file exists: one resumable task. True if it computed.

        An existing file is checked first: one of another request is refused, never taken as done."""
        self._check_index(k)
        if self.path(k).is_file():
            self.load(k)
            return False
        t0 = time.perf_counter()
        r = compute_magic(self.config, targets=self.chunks[k - 1], batch_targets=self.targets, measure=self.measure,
                          dataset=self.dataset, progress=progress, **self.kw)
        save_torch_atomic(self.path(k), {
            "format": CHUNK_FORMAT, "chunk": k, "provenance": self.provenance, "scores": r.scores.contiguous(),
            "train_indices": r.train_indices, "target_indices": r.target_indices, "phi": r.phi,
            "higher_is_better": r.higher_is_better, "stats": r.stats.to_dict(), "warnings": r.warnings,
            "settings": {**r.settings, "time_s": time.perf_counter() - t0,
                         "matches_trained_run": matches_checkpoint(self.run_dir, r.final_state, self.dtype)}})
        return True

    def load(self, k: int) -> dict[str, Any]:
        """Chunk ``k``'s file, checked: format, chunk number, provenance, target indices and shape."""
        path = self.path(k)
        blob = load_tagged(path, CHUNK_FORMAT, what="MAGIC chunk")
        hint = "delete it (or rerun with --force) to recompute it"
        prov = blob.get("provenance") or {}
        bad = [key for key, v in self.provenance.items() if prov.get(key) != v]
        if bad:
            raise ValueError(f"{path} was computed for another {', '.join(bad)} than this request; it is never "
                             f"reused: {hint}")
        want = self.chunks[k - 1]
        got = blob["target_indices"].tolist()
        if blob.get("chunk") != k or got != want:
            raise ValueError(f"{path}: expected chunk {k} with targets {want}, got chunk {blob.get('chunk')!r} with "
                             f"targets {got}; {hint}")
        s = blob["scores"]
        n = blob["train_indices"].numel()
        if tuple(s.shape) != (n, len(want)) or tuple(blob["phi"].shape) != (len(want),):
            raise ValueError(f"{path}: scores of shape {tuple(s.shape)}, expected ({n}, {len(want)}); {hint}")
        return blob

    def merge(self) -> MagicResult:
        """One MagicResult over all targets from the chunk files (all must exist; each one checked)."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(self)} MAGIC chunks in {self.dir} are not computed yet "
                               f"(chunks {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''})")
        blobs = [self.load(k) for k in range(1, len(self) + 1)]
        train = blobs[0]["train_indices"]
        for k, b in enumerate(blobs[1:], start=2):
            if not torch.equal(b["train_indices"], train):
                raise ValueError(f"{self.path(k)} covers other training examples than {self.path(1)}; delete it "
                                 "(or rerun with --force) to recompute it")
        stats = [ReplayStats(**b["stats"]) for b in blobs]
        total = dataclasses.replace(
            stats[0], targets=len(self.targets),
            forward_s=sum(s.forward_s for s in stats), reverse_s=sum(s.reverse_s for s in stats),
            compile_s=sum(s.compile_s for s in stats),
            peak_stored_states=max(s.peak_stored_states for s in stats),
            peak_stored_bytes=max(s.peak_stored_bytes for s in stats),
            max_rss_bytes=max((s.max_rss_bytes or 0 for s in stats), default=0) or None)
        matches = [b["settings"].get("matches_trained_run") for b in blobs]
        settings = {**blobs[0]["settings"], "time_s": sum(b["settings"]["time_s"] for b in blobs),
                    "chunks": len(self), "chunk": self.chunk,
                    "matches_trained_run": None if None in matches else all(matches)}
        scores = Scores(torch.cat([b["scores"] for b in blobs], 1), train.clone(),
                        torch.as_tensor(self.targets, dtype=torch.long), self.measurement, "magic",
                        bool(blobs[0]["higher_is_better"]))
        return MagicResult(scores, torch.cat([b["phi"] for b in blobs]), total, list(blobs[0]["warnings"]), settings)
