"""Profiling per model × resolution: parameters, FLOPs (FlopCounterMode), latency (benchmark Timer, CUDA
events), throughput, peak memory (CUDA stats or ru_maxrss in a fresh subprocess), per-layer summaries."""

from cnnlab.profile.flops import FlopCount, count_flops
from cnnlab.profile.layers import layer_table
from cnnlab.profile.memory import PassSpec, cpu_peak_memory, cuda_peak_memory
from cnnlab.profile.runner import (
    ProfileSettings,
    export,
    load_entries,
    plot_families,
    profile_model,
    run_profile,
    select_models,
    table_row,
)
from cnnlab.profile.timing import Latency, cuda_event_latency, measure

__all__ = [
    "FlopCount", "Latency", "PassSpec", "ProfileSettings", "count_flops", "cpu_peak_memory", "cuda_event_latency",
    "cuda_peak_memory", "export", "layer_table", "load_entries", "measure", "plot_families", "profile_model",
    "run_profile", "select_models", "table_row",
]
