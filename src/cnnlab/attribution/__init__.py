"""Data attribution: exact MAGIC metagradients through whole training runs, validated by the LDS.

>>> result = compute_magic(config, targets=range(10), measure="loss")   # scores N_train × 10
>>> summary = lds_analysis(run_dir, Regime(drop=0.01, models=50))       # after magic_analysis(run_dir)
"""

from cnnlab.attribution.baselines import BASELINES, tracin_scores, trak_available, trak_scores
from cnnlab.attribution.checkpointing import Checkpointing, SqrtCheckpoints, StoreAll, TreeCheckpoints, make_checkpointing
from cnnlab.attribution.lds import LDSStudy, Regime, lds_statistics, make_masks, predictions, train_subset_phi
from cnnlab.attribution.magic import MagicResult, compute_magic, measure_state, prepare_config
from cnnlab.attribution.chunks import MagicChunks
from cnnlab.attribution.measures import Measurement, get_measurement, list_measurements, parse_targets, register_measurement
from cnnlab.attribution.methods import (ATTRIBUTION_METHODS, AttributionMethod, AttributionRun, ExternalScores, Magic,
                                        TracIn, Trak, attribution_method, register_attribution_method)
from cnnlab.attribution.pipeline import (baseline_scores, ensure_trained_run, lds_analysis, magic_analysis,
                                         merge_magic_chunks)
from cnnlab.attribution.replay import RecordReplayStates, Replay, ReplayStats, StateLayout
from cnnlab.attribution.magic_files import load_magic, save_magic
from cnnlab.attribution.runs import run_info
from cnnlab.attribution.scores import Scores, load_external_scores, load_scores

__all__ = [
    "ATTRIBUTION_METHODS", "AttributionMethod", "AttributionRun", "ExternalScores", "Magic", "MagicChunks", "TracIn",
    "Trak", "attribution_method", "merge_magic_chunks", "register_attribution_method",
    "BASELINES", "Checkpointing", "LDSStudy", "MagicResult", "Measurement", "RecordReplayStates", "Regime", "Replay",
    "ReplayStats",
    "Scores", "SqrtCheckpoints", "StateLayout", "StoreAll", "TreeCheckpoints", "baseline_scores", "compute_magic",
    "ensure_trained_run", "get_measurement", "lds_analysis", "lds_statistics", "list_measurements",
    "load_external_scores", "load_magic", "load_scores", "magic_analysis", "make_checkpointing", "make_masks",
    "measure_state", "parse_targets", "predictions", "prepare_config", "register_measurement", "run_info",
    "save_magic", "tracin_scores", "train_subset_phi", "trak_available", "trak_scores",
]
