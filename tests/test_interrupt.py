"""Kill -9 at named points, resume, and get exactly what an uninterrupted run gets (docs/RELIABILITY.md).

Three recipe variants, each killed at a different kind of point (`CURATOR_FAULT`, loops/active.py)
and resumed under a different disturbance:

- two strategies that end up training on the same examples in different orders, killed between
  the strategies of a round, then the run directory moved before resuming;
- continued training (weights carried between rounds), killed after training, resumed with another
  tracking.uri;
- a generator source, killed after selecting, resumed with the MLflow store deleted.

The killed run is a subprocess (a real SIGKILL); the reference and the resume run in-process.
Selections, metrics, ledgers and MLflow metric histories must be identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launching import tiny_recipe

from curator.recipes import recipe_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BASE = tiny_recipe(
    seed=5,
    data={"pool": "synthetic:easy?n=10&seed=1", "test": "synthetic:easy?n=4&seed=2"},
    training={"epochs": 2},
    loop={"rounds": 3, "budget": 3},
)

VARIANTS = {
    # pool 10 = seed 4 + 3 + 3: in round 2 both strategies hold the whole pool, in their own order
    "same-set-other-order": ({"name": "order", "strategies": [{"name": "iid"}, {"name": "loss"}]}, "round2:done"),
    "continued-training": (
        {"name": "cont", "loop": {"rounds": 2, "budget": 3, "continue_training": True}},
        "round1:trained",
    ),
    "generator": (
        {
            "name": "gen",
            "loop": {"rounds": 2, "budget": 3},
            "data": {**BASE["data"], "source": "generator", "generator_pool_size": 12},
        },
        "round0:selected",
    ),
}


def _recipe(run_dir: Path, changes: dict, **extra) -> dict:
    d = json.loads(json.dumps(BASE))
    d.update(json.loads(json.dumps(changes)))
    d["output_dir"] = str(run_dir)
    d.update(extra)
    return d


def _run(d: dict) -> None:
    from curator.run import run_recipe

    run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a: None)


def _killed(d: dict, fault: str, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "my-recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    # one intra-op thread, as the in-process reference runs (the module's one_thread fixture): float
    # sums split over another thread count round differently, and the ledgers must be bit-identical
    env = {
        **os.environ,
        "CURATOR_FAULT": fault,
        "CURATOR_QUIET": "1",
        "PYTHONPATH": os.getcwd(),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        [sys.executable, "-m", "curator.cli.main", "run", str(path), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == -9, p.stderr[-3000:]


def _state(run_dir: Path) -> dict:
    """Everything a run's result consists of, per strategy and round, in comparable form."""
    import pandas as pd

    out = {}
    for rd in sorted(run_dir.glob("*/round-*")):
        key = f"{rd.parent.name}/{rd.name}"
        m = json.loads((rd / "metrics.json").read_text())
        for timing in ("train_seconds", "select_seconds", "round_seconds"):
            m.pop(timing, None)
        led = pd.read_parquet(rd / "ledger.parquet").drop(columns=["wall_seconds"], errors="ignore")
        out[key] = {
            "metrics": m,
            "next": json.loads((rd / "next_train_ids.json").read_text()),
            "ledger": led.to_dict("list"),
        }
        if (rd / "selection.parquet").exists():
            out[key]["selection"] = pd.read_parquet(rd / "selection.parquet").to_dict("list")
    return out


def _mlflow(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        name = run.info.run_name
        assert name not in out, f"run {name} duplicated"
        out[name] = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in ("test_accuracy", "premem_acc", "train_loss", "fraction_memorized")
        }
        out[name]["status"] = run.info.status
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert a[k] == b[k], k


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kill_then_resume_equals_uninterrupted(variant, tmp_path):
    changes, fault = VARIANTS[variant]
    ref = tmp_path / "ref"
    _run(_recipe(ref, changes))

    run = tmp_path / "killed" / "run"
    _killed(_recipe(run, changes), fault, tmp_path / "killed")
    extra: dict = {}
    if variant == "same-set-other-order":
        # killed after iid finished round 2, before loss trained it; then the directory moves
        assert (run / "iid/round-02/DONE").exists() and not (run / "loss/round-02/DONE").exists()
        moved = tmp_path / "elsewhere" / "run"
        moved.parent.mkdir()
        shutil.move(str(run), str(moved))
        run = moved
    elif variant == "continued-training":
        assert (run / "iid/round-00/trainable_state.pt").exists() and not (run / "iid/round-01/DONE").exists()
        extra["tracking"] = {"uri": "sqlite:///" + str(tmp_path / "other-store.db")}
    else:
        # killed in round 0 after selecting: the round is redone from its start, into a new store
        assert (run / "iid/run.json").exists() and not (run / "iid/round-00/DONE").exists()
        (run / "mlflow.db").unlink()
    _run(_recipe(run, changes, **extra))

    _assert_same(_state(run), _state(ref))
    uri = extra.get("tracking", {}).get("uri") or "sqlite:///" + str(run / "mlflow.db")
    name = changes["name"]
    _assert_same(_mlflow(uri, name), _mlflow("sqlite:///" + str(ref / "mlflow.db"), name))
    if variant == "same-set-other-order":
        assert not (tmp_path / "killed" / "run").exists()  # nothing written to where the run used to be
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        for r in runs:  # the rebuilt store's runs keep their artifacts under the new location
            assert r.info.artifact_uri.startswith(run.as_uri())
            rounds = [a.path for a in client.list_artifacts(r.info.run_id, "rounds")]
            assert len(rounds) == 3


def test_round_cache_key_captures_order_round_and_history():
    from curator.run import RoundCache

    k = RoundCache.key
    assert k(["a", "b"], 1, False) != k(["b", "a"], 1, False)
    assert k(["a", "b"], 1, False) == k(["a", "b"], 1, False, owner="x")  # shared across strategies
    assert k(["a", "b"], 1, False) != k(["a", "b"], 2, False)
    assert k(["a", "b"], 1, True, owner="x") != k(["a", "b"], 1, True, owner="y")  # own history
    assert k(["a", "b"], 0, True, owner="x") == k(["a", "b"], 0, True, owner="y")  # round 0: same base
