"""MLflow, used through `MlflowClient` with explicit run ids (no global "active run" state), so
that several strategy runs can be driven side by side and a resumed run logs into the same MLflow
run without duplicating anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from curator.errors import CuratorError


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    return "sqlite:///" + str((Path(run_dir) / "mlflow.db").resolve())


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail before any training if the tracking store cannot be used."""
    if uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///"):]).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CuratorError(f"tracking.uri {uri!r}: cannot create {parent} ({e})") from None
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # mlflow raises many types (MlflowException, requests errors ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CuratorError(f"tracking.uri {uri!r} cannot be reached ({first[:200]}); "
                           "start the server or set tracking.uri to a reachable store "
                           "(null = sqlite in the run directory)") from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested recipe dict -> MLflow params ('training.learning_rate': '0.0002')."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = str(v)[:6000]
    return out


class MlflowRun:
    """One MLflow run (one strategy of one recipe) that can be reopened after a crash."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | os.PathLike | None = None):
        self.uri = uri
        self.client = _client(uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            loc = None
            if artifact_root is not None:
                loc = Path(artifact_root).resolve().as_uri()
            exp_id = self.client.create_experiment(experiment, artifact_location=loc)
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        self.run_id: str | None = None

    def open(self, run_id: str | None, run_name: str, params: Mapping[str, str],
             tags: Mapping[str, str]) -> str:
        """Reopen `run_id` if given (resume), else create the run and log params once."""
        from mlflow.entities import RunTag

        if run_id is None and "curator.run_dir" in tags:
            # killed after MLflow made the run but before its id was saved: adopt it, don't duplicate
            found = self.client.search_runs([self.experiment_id], max_results=1,
                                            filter_string=f"tags.`curator.run_dir` = '{tags['curator.run_dir']}'")
            if found:
                # its params may be half logged; logging the same values again is allowed
                self.run_id = found[0].info.run_id
                self._log_params(params)
                run_id = self.run_id
        if run_id is not None:
            self.run_id = run_id
            run = self.client.get_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={**tags, "mlflow.runName": run_name})
        self.run_id = run.info.run_id
        self._log_params(params)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return self.run_id

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> bool:
        """Log a round's metrics in one batch, unless that step is already there (resume)."""
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v))]
        # one batch is one transaction: if its first metric is there, the whole round is
        if not batch or step in self.logged_steps(batch[0].key):
            return False
        self.client.log_batch(self.run_id, metrics=batch)
        return True

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
