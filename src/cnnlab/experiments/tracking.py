"""MLflow sink: a Trainer Callback that logs params, per-epoch metrics, the result and the run's files.

Default tracking URI: ``sqlite:///<parent of the run directory>/mlflow.db`` (a local file beside the runs,
no server; artifacts in ``mlartifacts/`` beside it). The MLflow run id is kept in ``RUN_DIR/mlflow.json``
so a resumed run continues the same MLflow run: params already there are never logged again (MLflow
forbids changing them), epochs already logged are not logged twice. The final weights are logged as
the artifact ``model/state_dict.pt``. ``log_run_dir`` records any finished run directory after the fact
(MAGIC, populations, ES).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from cnnlab.engine.callbacks import Callback
from cnnlab.utils.io import write_json_atomic

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer

RUN_FILE = "mlflow.json"
ARTIFACTS = ("config.yaml", "metrics.jsonl", "result.json", "curves.png")
_T = TypeVar("_T")


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError("MLflow tracking needs mlflow: pip install 'cnnlab[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def _retry(fn: Callable[[], _T], attempts: int = 8) -> _T:
    """Retry an MLflow call when several workers write one sqlite file at once ("database is locked")."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(0.05 * 2**i)
    raise AssertionError("unreachable")


def default_tracking_uri(root: str | Path) -> str:
    """``sqlite:///ROOT/mlflow.db``: the store beside a command's run directories, never the working directory."""
    return f"sqlite:///{(Path(root).resolve() / 'mlflow.db')}"


def default_artifact_location(uri: str) -> Optional[str]:
    """For a sqlite store, keep artifacts next to the database file (``mlartifacts/``) instead of the cwd."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.resolve().parent / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name`` (created if missing; safe when several workers race to create it)."""
    client = _client(uri)
    exp = _retry(lambda: client.get_experiment_by_name(name))
    if exp is not None:
        return exp.experiment_id
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=default_artifact_location(uri)))
    except Exception:  # noqa: BLE001  (created by another worker meanwhile)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten_params(config: dict[str, Any]) -> dict[str, str]:
    """Nested config -> ``{"optim.lr": "0.001", ...}`` (MLflow params are strings of at most 6000 characters)."""
    from cnnlab.utils.configdiff import flatten

    return {k: str(v)[:6000] for k, v in flatten(config).items()}


class MLflowCallback(Callback):
    """Log one Trainer run to MLflow.

    Args:
        tracking_uri (str, optional): Where to log. Default: ``sqlite:///`` + the run directory's parent +
            ``/mlflow.db`` (``sqlite:///mlflow.db`` for a run without a directory).
        experiment (str, optional): MLflow experiment name, created if missing. Default: ``cnnlab``.
        run_name (str, optional): MLflow run name. Default: the config's ``name``.
        tags (dict, optional): Tags set on the MLflow run.
        log_artifacts (bool, optional): Log config.yaml, metrics.jsonl, result.json, curves.png and the final
            weights (``model/state_dict.pt``) at the end. Default: True.
    """

    def __init__(self, tracking_uri: Optional[str] = None, *, experiment: str = "cnnlab",
                 run_name: Optional[str] = None, tags: Optional[dict[str, str]] = None, log_artifacts: bool = True):
        from importlib.util import find_spec

        if find_spec("mlflow") is None:  # fail now, not at the first epoch
            raise ImportError("MLflow tracking needs mlflow: pip install 'cnnlab[mlflow]'")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.log_artifacts = log_artifacts
        self.client: Any = _client(tracking_uri) if tracking_uri is not None else None
        self.run_id: Optional[str] = None
        self.skipped_params: list[str] = []  # already logged with another value: never overwritten
        self._logged_steps: set[int] = set()
        self._run_dir: Optional[Path] = None

    # ----------------------------------------------------------------- hooks
    def on_train_start(self, trainer: "Trainer") -> None:
        if not trainer.is_main:
            return
        self._run_dir = trainer.run_dir
        if self.tracking_uri is None:
            self.tracking_uri = (default_tracking_uri(self._run_dir.parent) if self._run_dir is not None
                                 else "sqlite:///mlflow.db")
            self.client = _client(self.tracking_uri)
        exp_id = ensure_experiment(self.tracking_uri, self.experiment)
        self.run_id = self._existing_run(exp_id)
        from mlflow.entities import Param, RunTag

        if self.run_id is None:
            run = _retry(lambda: self.client.create_run(exp_id, run_name=self.run_name or trainer.config.name, tags=self.tags))
            self.run_id = run.info.run_id
            if self._run_dir is not None:
                write_json_atomic(self._run_dir / RUN_FILE, {"tracking_uri": self.tracking_uri, "experiment_id": exp_id,
                                                            "run_id": self.run_id})
            existing: dict[str, str] = {}
        else:
            _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            data = _retry(lambda: self.client.get_run(self.run_id)).data
            existing = dict(data.params)
            history = _retry(lambda: self.client.get_metric_history(self.run_id, "train_loss"))
            self._logged_steps = {m.step for m in history}
        params = flatten_params(trainer.config.to_dict())
        self.skipped_params = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            _retry(functools.partial(self.client.log_batch, self.run_id, params=new[i:i + 100]))
        if self.skipped_params:
            note = ",".join(self.skipped_params)[:5000]
            _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag("cnnlab.param_conflicts", note)]))

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None:
        if self.run_id is None or epoch + 1 in self._logged_steps:
            return
        self._log_metrics(metrics, step=epoch + 1)
        self._logged_steps.add(epoch + 1)

    def on_train_end(self, trainer: "Trainer", result: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import RunTag

        summary = {"epochs_completed": result.get("epochs_completed"), "steps": result.get("steps"),
                   "num_params": result.get("num_params"), **{f"time_{k}": v for k, v in (result.get("timings") or {}).items()}}
        if "best" in result:
            summary[f"best_{result['best']['monitor']}"] = result["best"]["value"]
        self._log_metrics(summary, step=int(result.get("epochs_completed") or 0))
        status = result.get("status", "completed")
        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag("cnnlab.status", status)]))
        if self.log_artifacts and self._run_dir is not None:
            for name in ARTIFACTS:
                path = self._run_dir / name
                if path.exists():
                    _retry(functools.partial(self.client.log_artifact, self.run_id, str(path)))
            if status == "completed":
                self._log_model(trainer)
        self.close("FINISHED" if status == "completed" else "FAILED")

    def close(self, status: str, error: Optional[str] = None) -> None:
        """End the MLflow run (FINISHED, FAILED or KILLED), noting ``error`` as a tag."""
        if self.run_id is None:
            return
        from mlflow.entities import RunTag

        if error:
            _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag("cnnlab.error", error[:5000])]))
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))

    # ----------------------------------------------------------------- helpers
    def _log_model(self, trainer: "Trainer") -> None:
        """The final weights (the EMA's, where the run keeps one) as ``model/state_dict.pt``."""
        import tempfile

        import torch

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "state_dict.pt"
            torch.save({k: v.detach().cpu() for k, v in trainer.trained_model().state_dict().items()}, path)
            _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path="model"))

    def _existing_run(self, exp_id: str) -> Optional[str]:
        """The MLflow run this run directory logged to before (resume), if it is in this store and experiment."""
        if self._run_dir is None:
            return None
        from cnnlab.experiments.store import read_json

        rec = read_json(self._run_dir / RUN_FILE)
        if not rec or rec.get("tracking_uri") != self.tracking_uri or rec.get("experiment_id") != exp_id:
            return None
        try:
            self.client.get_run(rec["run_id"])
        except Exception:  # noqa: BLE001  (deleted, or a different store at the same URI)
            return None
        return rec["run_id"]

    def _log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(batch), 1000):
            _retry(functools.partial(self.client.log_batch, self.run_id, metrics=batch[i:i + 1000]))


def log_run_dir(tracking_uri: str, run_dir: str | Path, *, experiment: str = "cnnlab", run_name: Optional[str] = None) -> str:
    """Record a finished run directory (any kind: train, MAGIC, population, ES) as one new MLflow run.

    Params: config.yaml flattened. Metrics: each record of metrics.jsonl at its ``epoch`` (or ``generation``),
    then result.json's top-level numbers. Artifacts: config.yaml, metrics.jsonl, result.json, summary.json,
    model.pt (ES) and every PNG in the directory and its plots/ folder. Returns the MLflow run id.
    """
    from mlflow.entities import Param, RunTag

    from cnnlab.utils.io import load_yaml_text, read_jsonl

    run_dir = Path(run_dir)
    client = _client(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment)
    run_id = _retry(lambda: client.create_run(exp_id, run_name=run_name or run_dir.name)).info.run_id
    tracker = MLflowCallback(tracking_uri, experiment=experiment)
    tracker.run_id = run_id
    try:
        config_path = run_dir / "config.yaml"
        config = load_yaml_text(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        params = [Param(k, v) for k, v in flatten_params(config or {}).items()]
        for i in range(0, len(params), 100):
            _retry(functools.partial(client.log_batch, run_id, params=params[i:i + 100]))
        records = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        for i, rec in enumerate(records):
            step = rec.get("epoch", rec.get("generation", i + 1))
            tracker._log_metrics(rec, step=int(step) if isinstance(step, (int, float)) else i + 1)
        result_path = run_dir / "result.json"
        result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
        last = int(records[-1].get("epoch", len(records))) if records else 0
        tracker._log_metrics(result if isinstance(result, dict) else {}, step=last)
        status = str(result.get("status", "completed")) if isinstance(result, dict) else "completed"
        _retry(lambda: client.log_batch(run_id, tags=[RunTag("cnnlab.status", status), RunTag("cnnlab.run_dir", str(run_dir.resolve()))]))
        files = [run_dir / n for n in (*ARTIFACTS, "summary.json", "model.pt")] + sorted(run_dir.glob("*.png")) + sorted(run_dir.glob("plots/*.png"))
        for path in files:
            if path.is_file():
                folder = "plots" if path.parent.name == "plots" else None
                _retry(functools.partial(client.log_artifact, run_id, str(path), artifact_path=folder))
    except BaseException as e:
        tracker.close("FAILED", error=f"{type(e).__name__}: {e}")
        raise
    tracker.close("FINISHED" if status == "completed" else "FAILED")
    return run_id
