"""Experiments: sweep files -> runs -> run store (claims, resume, failures) -> executors -> results, plots, MLflow.

```python
from cnnlab.experiments import Sweep, run_local, collect
sweep = Sweep.load("sweeps/tiny_ablation.yaml")
for run in sweep.runs():           # index (1-based), name, run_dir, factors, labels, config, status
    ...
run_local(sweep, workers=2)
table = collect(sweep)             # rows, grouped() mean ± std over seeds, to_frame() (pandas)
```
"""

from cnnlab.experiments.executors import SubmitRequest, get_executor, list_executors, run_local, todo_runs
from cnnlab.experiments.results import ResultTable, collect, results_frame
from cnnlab.experiments.runner import Outcome, run_one
from cnnlab.experiments.store import RunLock, RunState, run_state
from cnnlab.experiments.sweep import Sweep, SweepRun

__all__ = [
    "Outcome", "ResultTable", "RunLock", "RunState", "SubmitRequest", "Sweep", "SweepRun", "collect",
    "get_executor", "list_executors", "results_frame", "run_local", "run_one", "run_state", "todo_runs",
]
