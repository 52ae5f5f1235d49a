"""Attribution artifacts inside an analysis run directory (the names of this module, kept where they were).

::

    RUN_DIR/                       a training run (config.yaml, metrics.jsonl, checkpoints/, result.json)
      scores.pt  scores.npy        MAGIC scores N_train × K (+ index metadata in scores.pt)
      magic.json                   train/target indices, measurement, replay cost, warnings
      magic_chunks/                MAGIC over chunks of targets (plan.json, chunk-*.pt) before the merge
      plots/                       proponent / opponent grids
      baselines/<method>.pt        baseline scores (tracin, trak) in the same layout
      lds/<regime>/                LDS subset models (masks.pt, models/*.json) and summary.json

Every file is written atomically; ``magic.json`` is written last, so its presence means the scores are complete.
The code lives in one module per job: :mod:`~cnnlab.attribution.scores` (the shared scores format),
:mod:`~cnnlab.attribution.magic_files` (MAGIC's files), :mod:`~cnnlab.attribution.runs` (listing and
cleaning run directories).
"""

from __future__ import annotations

from cnnlab.attribution.magic_files import load_magic, magic_scores, read_magic_meta, save_magic
from cnnlab.attribution.runs import CLEAN_WHAT, clean_run, dir_size, find_runs, run_info
from cnnlab.attribution.scores import (SCORES_FORMAT, Scores, load_baseline, load_external_scores, load_scores,
                                       save_baseline, save_scores)

_save_scores = save_scores  # the old private name

__all__ = ["CLEAN_WHAT", "SCORES_FORMAT", "Scores", "clean_run", "dir_size", "find_runs", "load_baseline",
           "load_external_scores", "load_magic", "load_scores", "magic_scores", "read_magic_meta", "run_info",
           "save_baseline", "save_magic", "save_scores"]
