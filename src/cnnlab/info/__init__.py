"""First-layer masking and mutual information MI(Y; Ŷ) in bits (plug-in + Miller-Madow, bootstrap CIs)."""

from cnnlab.info.analysis import MIConfig, masking_mi, mi_report, predict, select_examples
from cnnlab.info.estimators import (
    Estimate,
    contingency,
    mi_from_counts,
    miller_madow_term,
    mutual_information,
    paired_masking_stats,
    plugin_mi,
)
from cnnlab.info.masking import activation_shape, draw_masks, masked_output
from cnnlab.info.runs import compute_run_mi, load_run_mi, summarize, summary_rows

__all__ = [
    "Estimate", "MIConfig", "activation_shape", "compute_run_mi", "contingency", "draw_masks", "load_run_mi",
    "masked_output", "masking_mi", "mi_from_counts", "mi_report", "miller_madow_term", "mutual_information",
    "paired_masking_stats", "plugin_mi", "predict", "select_examples", "summarize", "summary_rows",
]
