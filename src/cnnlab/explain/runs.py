"""Moved to :mod:`cnnlab.engine.analysis_run` (below the analyses, which all use it); re-exported here."""

from cnnlab.engine.analysis_run import AnalysisRun, find_run_dirs, flatten, inputs_at, open_run, varying_factors

__all__ = ["AnalysisRun", "find_run_dirs", "flatten", "inputs_at", "open_run", "varying_factors"]
