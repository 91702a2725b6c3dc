"""The active curation loop end to end with the tiny model: MLflow runs, metrics and artifacts,
resuming after a kill -9, and a strategy that fails mid-run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launching import tiny_recipe

from curator.errors import StrategyError
from curator.recipes import recipe_from_dict
from curator.strategy import Strategy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TINY = tiny_recipe(
    name="tiny-loop",
    seed=3,
    data={"pool": "synthetic:easy?n=40&seed=1", "seed_size": 6},
    training={"epochs": 2},
    dynamics={"max_new_tokens": 12},
    evaluation={"max_new_tokens": 12},
    strategies=[{"name": "iid"}, {"name": "loss"}],
)


def _recipe(tmp_path, **over):
    d = json.loads(json.dumps(TINY))
    d["output_dir"] = str(tmp_path / "run")
    for k, v in over.items():
        d[k] = v
    return d


def _selections(run_dir: Path, label: str):
    import pandas as pd

    out = {}
    for rd in sorted((run_dir / label).glob("round-*")):
        if (rd / "selection.parquet").exists():
            df = pd.read_parquet(rd / "selection.parquet")
            out[rd.name] = df.sort_values("example_id").reset_index(drop=True)
    return out


def test_two_rounds_two_strategies_tracked_in_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from curator.run import run_recipe

    recipe = recipe_from_dict(_recipe(tmp_path))
    summary = run_recipe(recipe, progress=False, echo=lambda *a: None)
    client = MlflowClient(summary.tracking_uri)
    exp = client.get_experiment_by_name("tiny-loop")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"iid", "loss"}
    for name, run in runs.items():
        hist = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert sorted(m.step for m in hist) == [6, 10]  # step = number of training examples
        for key in ("premem_acc", "train_accuracy_lo", "train_accuracy_hi", "fraction_memorized", "round_seconds"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 2
        assert run.data.params["dynamics.samples"] == "2"
        assert run.data.tags["strategy"] == name
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"curator-run.yaml", "rounds", "compare"} <= arts
        r0 = {a.path for a in client.list_artifacts(run.info.run_id, "rounds/round-00")}
        assert {"rounds/round-00/ledger.parquet", "rounds/round-00/selection.parquet"} <= r0
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # round 0 trains on the identical seed set for both strategies: same ledger
    import pandas as pd

    l_iid = pd.read_parquet(summary.run_dir / "iid/round-00/ledger.parquet")
    l_loss = pd.read_parquet(summary.run_dir / "loss/round-00/ledger.parquet")
    pd.testing.assert_frame_equal(l_iid, l_loss)
    # every candidate has a score; exactly `budget` are selected
    sel = pd.read_parquet(summary.run_dir / "loss/round-00/selection.parquet")
    assert len(sel) == 40 - 6 and sel["selected"].sum() == 4 and sel["score"].notna().all()
    assert summary.curves_png.exists() and "Data efficiency" in summary.compare_table


def _curate(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {}), "CURATOR_QUIET": "1"}
    return subprocess.run(
        [sys.executable, "-m", "curator.cli.main", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_kill9_mid_round_then_resume_equals_uninterrupted(tmp_path):
    from mlflow.tracking import MlflowClient

    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "recipe.yaml").write_text(yaml.safe_dump(_recipe(d)))
    # killed after round 1's training, before that round is written
    p = _curate(["run", str(a / "recipe.yaml"), "--quiet"], {"CURATOR_FAULT": "round1:trained"})
    assert p.returncode == -9, p.stderr[-2000:]
    assert (a / "run/iid/round-00/DONE").exists() and not (a / "run/iid/round-01/DONE").exists()
    p = _curate(["run", str(a / "recipe.yaml"), "--quiet"])
    assert p.returncode == 0, p.stderr[-2000:]
    p = _curate(["run", str(b / "recipe.yaml"), "--quiet"])
    assert p.returncode == 0, p.stderr[-2000:]
    for label in ("iid", "loss"):
        sa, sb = _selections(a / "run", label), _selections(b / "run", label)
        assert sa.keys() == sb.keys() and sa
        for k in sa:
            assert sa[k]["example_id"].tolist() == sb[k]["example_id"].tolist()
            assert sa[k]["selected"].tolist() == sb[k]["selected"].tolist()
        ma = json.loads((a / f"run/{label}/round-01/metrics.json").read_text())
        mb = json.loads((b / f"run/{label}/round-01/metrics.json").read_text())
        assert ma["test_accuracy"] == mb["test_accuracy"] and ma["premem_acc"] == mb["premem_acc"]
    client = MlflowClient("sqlite:///" + str(a / "run/mlflow.db"))
    exp = client.get_experiment_by_name("tiny-loop")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["iid", "loss"]  # no duplicated runs
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "test_accuracy")]
        assert sorted(steps) == [6, 10]  # nothing logged twice


class Exploding(Strategy):
    name = "exploding"
    description = "fails on purpose (tests)"
    needs = frozenset()

    def select(self, ctx, k):
        raise RuntimeError("boom")


def test_failing_strategy_leaves_round_undone_and_rerun_resumes(tmp_path):
    from curator.run import run_recipe

    d = _recipe(tmp_path, strategies=[{"name": "test_loop:Exploding"}])
    with pytest.raises(StrategyError, match="'test_loop:Exploding' failed in round 0: RuntimeError: boom"):
        run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a: None)
    label = "test_loop_Exploding"
    assert not (tmp_path / f"run/{label}/round-00/DONE").exists()
    # fix the recipe (a working strategy under the same label) and rerun: it resumes and finishes
    d["strategies"] = [{"name": "iid", "label": label}]
    run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a: None)
    assert (tmp_path / f"run/{label}/round-01/DONE").exists()


def test_budget_larger_than_pool_trains_on_the_final_selection(tmp_path):
    from curator.run import run_recipe

    d = _recipe(tmp_path, strategies=[{"name": "iid"}])
    d["data"]["pool"] = "synthetic:easy?n=9&seed=1"
    d["data"]["test"] = "synthetic:easy?n=6&seed=2"
    d["loop"] = {"rounds": 4, "budget": 2}
    # pool 9, seed 6: round 0 adds 2, round 1 can add only the last 1, round 2 trains on all 9
    # (the final selection) and then stops: nothing is left to select
    s = run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a: None)
    info = s.strategies["iid"]
    assert info["rounds"] == 3 and info["final"]["n_train"] == 9
    assert info["stopped_reason"] == "the pool is exhausted"
    r1 = json.loads((tmp_path / "run/iid/round-01/metrics.json").read_text())
    assert "could add only 1 of 2" in r1["selection_note"]


def test_resuming_with_changed_settings_is_refused(tmp_path):
    from curator.errors import ConfigError
    from curator.run import prepare_workspace

    d = _recipe(tmp_path)
    prepare_workspace(recipe_from_dict(d), progress=False)
    d["training"]["learning_rate"] = 0.01
    with pytest.raises(ConfigError, match=r"training.learning_rate: 0.003 -> 0.01"):
        prepare_workspace(recipe_from_dict(d), progress=False)
    d["training"]["learning_rate"] = 0.003
    d["loop"]["rounds"] = 4  # more rounds is a legitimate resume
    prepare_workspace(recipe_from_dict(d), progress=False)
    # a run made before a setting existed resumes: the missing key reads as its default
    saved = tmp_path / "run" / "curator-run.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["dynamics"]["defer"]
    saved.write_text(yaml.safe_dump(old))
    prepare_workspace(recipe_from_dict(d), progress=False)


def test_deferred_tracking_in_the_loop_gives_the_same_premem(tmp_path):
    """dynamics.defer: the loop hands the tracker its live model; final PreMemAcc is unchanged."""
    from curator.dynamics.ledger import read_ledger
    from curator.dynamics.metrics import premem_acc
    from curator.run import run_recipe

    ledgers = {}
    for defer in (False, True):
        d = _recipe(tmp_path / str(defer), strategies=[{"name": "iid"}])
        d["dynamics"] = {**d["dynamics"], "temperature": 0.0, "defer": defer, "samples": 3}
        d["training"]["epochs"] = 3
        s = run_recipe(recipe_from_dict(d), progress=False, echo=lambda *a: None)
        ledgers[defer] = [read_ledger(s.run_dir / f"iid/round-0{r}/ledger.parquet") for r in (0, 1)]
    for lazy, deferred in zip(ledgers[False], ledgers[True]):
        assert deferred.meta["defer"] is True and lazy.meta["defer"] is False
        assert premem_acc(deferred)[3].to_dict() == premem_acc(lazy)[3].to_dict()
        assert deferred.df.n_samples.sum() <= lazy.df.n_samples.sum()
