"""MLflow, used through `MlflowClient` with explicit run ids (no global "active run" state), so
that several strategy runs can be driven side by side and a resumed run logs into the same MLflow
run without duplicating anything.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from curator.errors import CuratorError
from curator.io import atomic_path
from curator.rounds import MLFLOW_DB


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    return "sqlite:///" + str((Path(run_dir) / MLFLOW_DB).resolve())


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# schemes MLflow's tracking stores accept (a database URI may add a driver: postgresql+psycopg2)
_SCHEMES = {"file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc"}


def uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be an MLflow tracking URI, or None. Checks the form only, connects to nothing."""
    if not uri.strip():
        return "is empty; use null for the sqlite store in the run directory"
    if "://" not in uri and not uri.startswith(("databricks", "uc:")):
        return None  # a plain path: a local file store
    scheme = uri.split("://", 1)[0].split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _SCHEMES:
        return (
            f"{uri!r} has an unknown scheme {scheme!r}; use sqlite:///path/mlflow.db, http(s)://host:port, "
            "a database URI (postgresql://, mysql://), a local path, or null for sqlite in the run directory"
        )
    return None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, rebuild_for: str | os.PathLike | None = None) -> list[str]:
    """Fail before any training if the tracking store cannot be used. Returns notes.

    A new sqlite store is created under a temporary name and renamed when MLflow has finished
    making its tables, so an interruption never leaves a half-made store behind. With
    ``rebuild_for`` (the run directory, when the store is curator's own file inside it), a store
    that cannot be opened or was made for another directory (the run dir was copied or moved) is
    set aside and made anew; each strategy then logs its finished rounds again from the round
    files, which are the source of truth.
    """
    problem = uri_problem(uri)
    if problem:
        raise CuratorError(f"tracking.uri: {problem}")
    notes: list[str] = []
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CuratorError(f"tracking.uri {uri!r}: cannot create {db.parent} ({e.strerror or e})") from None
        if rebuild_for is not None and db.exists():
            why = _unusable_store(uri, Path(rebuild_for))
            if why:
                aside = db.with_name(f"{db.name}.old-{int(time.time())}")
                os.replace(db, aside)
                notes.append(
                    f"the MLflow store {db} {why}; it was moved to {aside.name} and is being rebuilt "
                    "from the round files"
                )
        if not db.exists() or db.stat().st_size == 0:
            _create_sqlite_store(uri, db)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # mlflow raises many types (MlflowException, requests errors ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if db is not None and db.exists():
            raise CuratorError(
                f"tracking.uri {uri!r}: the store {db} cannot be opened ({first[:200]}); "
                "it may be damaged or from another MLflow version: move it away, or set "
                "tracking.uri to another store"
            ) from None
        raise CuratorError(
            f"tracking.uri {uri!r} cannot be reached ({first[:200]}); "
            "start the server or set tracking.uri to a reachable store "
            "(null = sqlite in the run directory)"
        ) from None
    return notes


def _create_sqlite_store(uri: str, db: Path) -> None:
    """Make the store's tables under a temporary name, then rename: the store appears whole or not at all."""
    import logging

    quiet = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic.runtime.migration")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # "Creating initial MLflow database tables..." is MLflow's business, not the user's
        lg.setLevel(logging.WARNING)
    try:
        # atomic_path's temporary name is never used twice: MLflow caches one store per URI, bound
        # to the file it first opened
        with atomic_path(db) as tmp:
            _client("sqlite:///" + str(tmp)).search_experiments(max_results=1)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def _release(uri: str) -> None:
    """Close the pooled sqlite connections MLflow keeps for ``uri``, so that the next use opens the
    file at that path anew (after it was replaced) instead of the old file. Best effort: the
    engine cache is not public MLflow API, and a fresh process never needs this."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = getattr(SqlAlchemyStore, "_engine_map", {}).get(uri)
        if engine is not None:
            engine.dispose()
    except Exception:
        pass


def _unusable_store(uri: str, run_dir: Path) -> str | None:
    """Why curator's own store in ``run_dir`` must be rebuilt ('damaged ...', 'made ...'), or None."""
    # probed under an equivalent spelling of the path: MLflow caches one store (and its open sqlite
    # connections) per URI string, and the real URI must not be bound to a file about to be replaced
    path = _sqlite_path(uri)
    if path is None:
        return None
    probe = "sqlite:///" + str(path.parent) + "/./" + path.name
    try:
        exps = _client(probe).search_experiments()
    except Exception as e:
        _release(probe)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"is damaged (it cannot be opened: {first[:120]})"
    _release(probe)
    mine = run_dir.resolve().as_uri()
    for exp in exps:
        if exp.experiment_id != "0" and not str(exp.artifact_location).startswith(mine):
            return f"was made for another directory ({exp.artifact_location}: the run dir was copied or moved)"
    return None


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


# MLflow 3's UI opens an experiment on the view its kind names; without the tag it guesses, and
# opens curator's experiments on the GenAI traces overview ("No data"). The values are MLflow's
# own (mlflow/server/js: GENAI_DEVELOPMENT = "genai_development", CUSTOM_MODEL_DEVELOPMENT =
# "custom_model_development"): ours is model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# set on the experiment of a multi-seed run: its runs are strategy x seed, named "<label> seed <n>"
SEEDS_TAG = "curator.seeds"


def ensure_experiment(
    client, name: str, artifact_root: str | os.PathLike | None = None, tags: Mapping[str, str] | None = None
):
    """The experiment ``name`` (made if missing, with its artifacts under ``artifact_root``), tagged
    as a model-training experiment plus ``tags``; tags it lacks are added (an experiment made by an
    older curator). Returns the experiment."""
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING, **(tags or {})}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        loc = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
        client.create_experiment(name, artifact_location=loc, tags=tags)
        return client.get_experiment_by_name(name)
    for key, value in tags.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return client.get_experiment(exp.experiment_id)


class MlflowRun:
    """One MLflow run (one strategy of one recipe) that can be reopened after a crash."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | os.PathLike | None = None):
        self.uri = uri
        self.client = _client(uri)
        exp = ensure_experiment(self.client, experiment, artifact_root)
        self.experiment_id = exp.experiment_id
        # runs of a multi-seed experiment carry their seed in the name, so the runs table reads
        # "iid seed 0", "iid seed 1" ... (the seed is also a tag: group by it in the UI)
        self.multi_seed = SEEDS_TAG in exp.tags
        self.run_id: str | None = None
        self.created = False  # open() made a new run: every finished round must be logged into it

    def open(self, run_id: str | None, run_name: str, params: Mapping[str, str], tags: Mapping[str, str]) -> str:
        """Reopen `run_id` if given (resume), else create the run and log params once."""
        from mlflow.entities import RunTag

        if run_id is not None and not self._exists(run_id):
            run_id = None  # another or a rebuilt store: make the run again; the caller logs its rounds again
        if run_id is None and "curator.run_dir" in tags:
            # killed after MLflow made the run but before its id was saved: adopt it, don't duplicate
            found = self._find_by_tag("curator.run_dir", tags["curator.run_dir"])
            if found is not None:
                # its params may be half logged; logging the same values again is allowed
                self.run_id = found
                self._log_params(params)
                run_id = self.run_id
        if run_id is not None:
            self.run_id = run_id
            run = self.client.get_run(run_id)
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        self.created = True
        if self.multi_seed and "seed" in tags:
            run_name = f"{run_name} seed {tags['seed']}"
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, "mlflow.runName": run_name})
        self.run_id = run.info.run_id
        self._log_params(params)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return self.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.experiment_id == self.experiment_id and run.info.lifecycle_stage != "deleted"

    def _find_by_tag(self, key: str, value: str) -> str | None:
        # compared here, not in a filter string, so quotes and backticks in paths need no escaping
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            for run in page:
                if run.data.tags.get(key) == value:
                    return run.info.run_id
            token = page.token
            if not token:
                return None

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> bool:
        """Log a round's metrics in one batch, unless that step is already there (resume)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        # one batch is one transaction: if its first metric is there, the whole round is
        if not batch or step in self.logged_steps(batch[0].key):
            return False
        self.client.log_batch(self.run_id, metrics=batch)
        return True

    def log_training_set(self, name: str, ids: list[str], source: str) -> None:
        """Log a round's training set as the run's MLflow dataset input (the runs table's Dataset
        column): named for the round, its digest a hash of the ids in order. MLflow keeps one input
        per (dataset, run), so logging it again on resume adds nothing."""
        import hashlib
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
        ds = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            schema=json.dumps({"mlflow_colspec": [{"name": "example_id", "type": "string"}]}),
            profile=json.dumps({"num_rows": len(ids)}),
        )
        self.client.log_inputs(self.run_id, [DatasetInput(ds, tags=[InputTag("mlflow.data.context", "training")])])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
