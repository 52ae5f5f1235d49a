"""Explanations: Grad-CAM, Integrated Gradients, saliency, SmoothGrad (captum), image grids, faithfulness
metrics, and the comparison of maps across input resolutions."""

from cnnlab.explain.compare import compare_maps, spearman, to_common_grid, topk_iou
from cnnlab.explain.core import Explanations, build_methods, explain, faithfulness, faithfulness_table, resolve_targets
from cnnlab.explain.methods import AttributionMethod, create_method, list_methods, register_method, to_map
from cnnlab.explain.pipeline import compare_runs, explain_run
from cnnlab.engine.analysis_run import AnalysisRun, find_run_dirs, open_run

__all__ = [
    "AnalysisRun", "AttributionMethod", "Explanations", "build_methods", "compare_maps", "compare_runs", "create_method",
    "explain", "explain_run", "faithfulness", "faithfulness_table", "find_run_dirs", "list_methods", "open_run",
    "register_method", "resolve_targets", "spearman", "to_common_grid", "to_map", "topk_iou",
]
