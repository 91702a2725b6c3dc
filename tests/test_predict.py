"""Generalization prediction: fits, ATC, the metric comparison and the p sweep on planted runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from curator.analysis.predict import (
    Run,
    agreement_confidence,
    atc_predict,
    atc_threshold,
    check_run,
    find_runs,
    linear_fit,
    load_run,
    make_run,
    metric_table,
    predict,
    write_report,
    write_run,
)
from curator.dynamics.ledger import Ledger
from curator.errors import CuratorError, DataError

# ----------------------------------------------------------------------------- linear_fit


def test_fit_hand_computed():
    # mean x = mean y = 1; sxx = 2, sxy = 1, syy = 2 -> slope 1/2, intercept 1/2, R² = 1/4
    f = linear_fit([0, 1, 2], [0, 2, 1], n_boot=0)
    assert f.slope == pytest.approx(0.5)
    assert f.intercept == pytest.approx(0.5)
    assert f.r2 == pytest.approx(0.25)
    assert f.r == pytest.approx(0.5)
    assert f.n == 3 and f.excluded == ()


def test_fit_recovers_exact_line():
    x = np.linspace(0, 1, 7)
    f = linear_fit(x, 3 * x - 1)
    assert f.slope == pytest.approx(3) and f.intercept == pytest.approx(-1) and f.r2 == pytest.approx(1)
    assert f.slope_ci == pytest.approx((3, 3)) and f.r2_ci[0] == pytest.approx(1)


def test_fit_recovers_planted_noisy_line():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, 400)
    y = 2 * x + 1 + rng.normal(0, 0.1, 400)
    f = linear_fit(x, y, n_boot=500, seed=3)
    # population R² = var(2x) / (var(2x) + 0.01) with var(2x) = 4/12
    expected_r2 = (4 / 12) / (4 / 12 + 0.01)
    assert f.r2 == pytest.approx(expected_r2, abs=0.015)
    assert f.slope == pytest.approx(2, abs=0.05)
    assert f.slope_ci[0] < 2 < f.slope_ci[1]
    assert f.r2_ci[0] < f.r2 < f.r2_ci[1]
    # the same seed gives the same intervals
    assert linear_fit(x, y, n_boot=500, seed=3).slope_ci == f.slope_ci


def test_fit_planted_absence():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    f = linear_fit(x, y)
    assert f.r2 < 0.03
    assert f.slope_ci[0] < 0 < f.slope_ci[1]


def test_fit_excludes_nan_and_reports():
    f = linear_fit([0, 1, np.nan, 2, 3], [0, 2, 5, 1, np.nan], n_boot=0)
    assert f.excluded == (2, 4) and f.n == 3
    assert f.r2 == pytest.approx(0.25)  # the three remaining points are the hand-computed case


@pytest.mark.parametrize(
    "x,y,msg",
    [
        ([0, 1], [0, 1], "at least 3 points, got 2"),
        ([0, 1, np.nan], [0, 1, 2], r"got 2 \(1 dropped as NaN\)"),
        ([1, 1, 1], [0, 1, 2], "x is constant"),
        ([0, 1, 2], [5, 5, 5], "y is constant"),
        ([0, 1, 2], [0, 1], "x has 3 points but y has 2"),
    ],
)
def test_fit_errors(x, y, msg):
    with pytest.raises(CuratorError, match=msg):
        linear_fit(x, y)


# ----------------------------------------------------------------------------- ATC


def test_atc_hand_computed():
    src = [1, 1, 0.75, 0.5, 0.5, 0.25]
    # accuracy 1/2 of 6 -> 3 examples above: t = 0.75 with all of the tie counted
    assert atc_threshold(src, 0.5) == (0.75, 1.0)
    assert atc_predict(src, 0.5, [1, 0.75, 0.5, 0.25]) == pytest.approx(2 / 4)
    # accuracy 3/4 -> 4.5 above: the two 1s and the 0.75 (3), plus 1.5 of the two 0.5s: lam = 0.75
    assert atc_threshold(src, 0.75) == (0.5, 0.75)
    assert atc_predict(src, 0.75, [1, 0.75, 0.5, 0.25]) == pytest.approx((2 + 0.75) / 4)
    # the threshold reproduces the source accuracy on the source itself
    for acc in (0.0, 1 / 6, 0.4, 0.9, 1.0):
        assert atc_predict(src, acc, src) == pytest.approx(acc)


def test_agreement_confidence():
    assert agreement_confidence(["3", "3", "4", None]) == 0.5
    assert agreement_confidence([None, None]) == 0.0
    assert agreement_confidence(["7"] * 5) == 1.0


# ----------------------------------------------------------------------------- planted runs
#
# Four examples, k = 4. A and B are never memorized (perplexity 2.0): their PreMemAcc equals their
# accuracy. C and D are memorized from the first checkpoint (perplexity 1.05) at any p >= 1.05:
# their PreMemAcc is 0 whatever their accuracy. So, in quarters, with u = correct(A) + correct(B)
# and v = correct(C) + correct(D):  PreMemAcc = u / 16, train accuracy = (u + v) / 16.
# Test accuracy is planted as 0.2 + 0.5 * PreMemAcc; v is chosen so that train accuracy is
# nearly uncorrelated with it.

U = [[1, 2, 3], [2, 4, 6], [3, 5, 8]]
V = [[5, 7, 4], [6, 2, 3], [4, 4, 0]]
SPLIT = {0: (0, 0), 1: (1, 0), 2: (1, 1), 3: (2, 1), 4: (2, 2), 5: (3, 2), 6: (3, 3), 7: (4, 3), 8: (4, 4)}
PPL = [2.0, 2.0, 1.05, 1.05]


def planted_runs(extra: bool = True) -> list[Run]:
    runs = []
    for r, (us, vs) in enumerate(zip(U, V)):
        nc = np.array(
            [[SPLIT[u][0] for u in us], [SPLIT[u][1] for u in us], [SPLIT[v][0] for v in vs], [SPLIT[v][1] for v in vs]]
        )
        led = Ledger.from_arrays(
            ["A", "B", "C", "D"], nc, k=4, perplexity=np.repeat([PPL], 3, axis=0).T, steps=[10, 20, 30]
        )
        test = [0.2 + 0.5 * u / 16 for u in us]
        sig = {"train_loss": [1.0 - 0.1 * r - 0.05 * m for m in range(3)]} if extra else {}
        runs.append(make_run(f"lr{r}", led, test, **sig))
    return runs


def test_metric_table_values():
    t = metric_table(planted_runs(), p=1.2)
    assert list(t["run"]) == ["lr0"] * 3 + ["lr1"] * 3 + ["lr2"] * 3
    assert list(t["checkpoint"]) == [1, 2, 3] * 3
    assert list(t["step"]) == [10, 20, 30] * 3
    np.testing.assert_allclose(t["premem"], np.ravel(U) / 16)
    np.testing.assert_allclose(t["train_accuracy"], (np.ravel(U) + np.ravel(V)) / 16)
    np.testing.assert_allclose(t["test_accuracy"], 0.2 + 0.5 * np.ravel(U) / 16)
    assert t["grad_variance"].isna().all() and t["atc"].isna().all()


def test_predict_ranks_premem_over_train_accuracy():
    rep = predict(planted_runs(), p=1.2, p_grid=[1.02, 1.1, 1.5, 2.5])
    pm = rep.result("premem").fit
    assert pm.r2 == pytest.approx(1.0) and pm.slope == pytest.approx(0.5) and pm.intercept == pytest.approx(0.2)
    ta = rep.result("train_accuracy").fit
    u, uv = np.ravel(U), np.ravel(U) + np.ravel(V)
    expected = np.corrcoef(u, uv)[0, 1] ** 2
    assert ta.r2 == pytest.approx(expected) and expected < 0.2
    assert rep.results[0].metric == "premem"
    ranking = rep.ranking()
    assert ranking["r2"].iloc[0] == pytest.approx(1.0)
    assert ranking.set_index("metric").loc["train_accuracy", "rank"] > 1
    # signals the runs do not carry are reported, not fitted
    assert rep.result("grad_variance").fit is None
    assert rep.result("grad_variance").note == "not available in these runs"
    assert rep.exclusions == []


def test_p_sweep():
    rep = predict(planted_runs(), p=1.2, p_grid=[1.02, 1.1, 1.5, 2.5])
    sweep = rep.p_sweep.set_index("p")
    assert list(sweep.index) == [1.02, 1.1, 1.2, 1.5, 2.5]
    # below 1.05 nothing is memorized: PreMemAcc is train accuracy
    u, uv = np.ravel(U), np.ravel(U) + np.ravel(V)
    assert sweep.loc[1.02, "r2"] == pytest.approx(np.corrcoef(u, uv)[0, 1] ** 2)
    for p in (1.1, 1.2, 1.5):
        assert sweep.loc[p, "r2"] == pytest.approx(1.0)
    # at p >= 2 every example is memorized: PreMemAcc is 0 everywhere, so there is no fit
    assert np.isnan(sweep.loc[2.5, "r2"]) and "constant" in sweep.loc[2.5, "note"]
    assert rep.best_p in (1.1, 1.2, 1.5)


def test_atc_from_confidences_in_metric_table():
    runs = planted_runs(extra=False)
    rows = []
    for ck in (1, 2, 3):
        for i, c in enumerate([1, 1, 0.75, 0.5, 0.5, 0.25]):
            rows.append(
                {
                    "checkpoint": ck,
                    "split": "train",
                    "example_id": f"t{i}",
                    "confidence": c,
                    "accuracy": 0.5 if ck == 1 else 0.75,
                }
            )
        for i, c in enumerate([1, 0.75, 0.5, 0.25]):
            rows.append({"checkpoint": ck, "split": "test", "example_id": f"q{i}", "confidence": c})
    runs[0].confidences = pd.DataFrame(rows)
    t = metric_table(runs, p=1.2)
    np.testing.assert_allclose(t["atc"].iloc[:3], [0.5, 0.6875, 0.6875])
    assert t["atc"].iloc[3:].isna().all()


def test_predict_end_to_end_report(tmp_path):
    runs = planted_runs()
    for r in runs:
        write_run(r, tmp_path / "sweep" / r.name)
    loaded = [load_run(d) for d in find_runs(tmp_path / "sweep")]
    assert [r.name for r in loaded] == ["lr0", "lr1", "lr2"]
    rep = predict(loaded, p=1.2, p_grid=[1.02, 1.1])
    paths = write_report(rep, tmp_path / "out")
    for key in ("scatter_premem", "scatter_train_accuracy", "scatter_train_loss", "p_sweep_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "scatter_grad_variance" not in paths
    md = paths["report"].read_text()
    assert "| 1 | PreMemAcc (p=1.2) | 1.000 |" in md
    assert "gradient variance" in md and "not available" in md
    table = pd.read_csv(paths["metric_table"])
    assert len(table) == 9


# ----------------------------------------------------------------------------- bad input


def _raw_run(**changes) -> Run:
    run = planted_runs(extra=False)[0]
    df = run.df.copy()
    return Run("bad", df, run.checkpoints.copy())


def test_checkpoints_must_line_up():
    run = planted_runs()[0]
    run.checkpoints = run.checkpoints[run.checkpoints["checkpoint"] != 3]
    with pytest.raises(DataError, match=r"run 'lr0'.*checkpoint\(s\) \[3\] are in the ledger but have no test"):
        check_run(run)
    run = planted_runs()[0]
    run.checkpoints = pd.concat([run.checkpoints, pd.DataFrame({"checkpoint": [4], "test_accuracy": [0.5]})])
    with pytest.raises(DataError, match=r"checkpoint\(s\) \[4\] have a test accuracy but no ledger rows"):
        check_run(run)
    run = planted_runs()[0]
    run.checkpoints["step"] = [10, 25, 30]
    with pytest.raises(DataError, match="checkpoint 2 is step 20 in the ledger but step 25"):
        check_run(run)
    run = planted_runs()[0]
    run.checkpoints = run.checkpoints.rename(columns={"test_accuracy": "acc"})
    with pytest.raises(DataError, match=r"lacks column\(s\) \['test_accuracy'\]"):
        check_run(run)


def test_make_run_length_mismatch():
    led = planted_runs()[0].ledger
    with pytest.raises(DataError, match="2 test accuracies for 3 ledger checkpoints"):
        make_run("x", led, [0.1, 0.2])


def test_mismatched_example_ids():
    run = _raw_run()
    df = run.ledger
    df.loc[(df["checkpoint"] == 2) & (df["example_id"] == "D"), "example_id"] = "E"
    with pytest.raises(DataError, match=r"checkpoint 2 covers different example ids.*'D'.*'E'"):
        check_run(run)


def test_nan_perplexity_error_or_reported_drop(tmp_path):
    run = _raw_run()
    df = run.ledger
    df.loc[(df["checkpoint"] == 2) & (df["example_id"] == "C"), ["perplexity", "target_nll"]] = np.nan
    with pytest.raises(DataError, match="1 ledger row.*NaN perplexity"):
        check_run(run)
    others = planted_runs()[1:]
    rep = predict([run, *others], p=1.2, p_grid=[1.1], drop_nan=True)
    assert any("1 of 4 examples dropped for NaN perplexities" in e and "'C'" in e for e in rep.exclusions)
    # run 'bad' now averages over 3 examples (A, B, D): its PreMemAcc is u / 12
    pm = rep.table["premem"].to_numpy()
    np.testing.assert_allclose(pm, np.r_[np.array(U[0]) / 12, np.ravel(U[1:]) / 16])
    assert rep.result("premem").fit.r2 == pytest.approx(np.corrcoef(pm, rep.table["test_accuracy"])[0, 1] ** 2)
    # the same from a run directory on disk
    d = tmp_path / "nanrun"
    d.mkdir()
    df.to_parquet(d / "ledger.parquet")
    run.checkpoints.to_csv(d / "checkpoints.csv", index=False)
    with pytest.raises(DataError, match="NaN"):
        load_run(d)
    loaded = load_run(d, drop_nan=True)
    assert "C" not in set(loaded.df["example_id"])
    assert "dropped for NaN" in loaded.meta["notes"][0]


def test_too_few_points():
    run = planted_runs()[0]
    run.checkpoints.loc[run.checkpoints["checkpoint"] == 1, "test_accuracy"] = np.nan
    with pytest.raises(CuratorError, match="only 2 .* point"):
        predict([run])
    run.name = "short"
    rep = predict(planted_runs()[1:] + [run], p=1.2, p_grid=[1.1])
    assert any("checkpoint(s) [1] have no test accuracy" in e for e in rep.exclusions)
    assert rep.result("premem").fit.n == 8


def test_other_errors(tmp_path):
    with pytest.raises(CuratorError, match="p must be > 1"):
        predict(planted_runs(), p=1.0)
    runs = planted_runs()
    runs[1].name = "lr0"
    with pytest.raises(CuratorError, match=r"unique; repeated: \['lr0'\]"):
        metric_table(runs, 1.2)
    with pytest.raises(DataError, match="no ledger.parquet"):
        load_run(tmp_path)
    with pytest.raises(DataError, match="no run directories"):
        find_runs(tmp_path)


def test_checkpoint_table_json(tmp_path):
    run = planted_runs()[0]
    write_run(run, tmp_path / "r")
    (tmp_path / "r" / "checkpoints.csv").unlink()
    recs = run.checkpoints.to_dict(orient="records")
    (tmp_path / "r" / "checkpoints.json").write_text(json.dumps({"checkpoints": recs}))
    back = load_run(tmp_path / "r")
    np.testing.assert_allclose(back.checkpoints["test_accuracy"], run.checkpoints["test_accuracy"])


# ----------------------------------------------------------------------------- sweep plumbing


class _FakeSampler:
    """Real target log-probs from the model being trained; scripted, seeded answers."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok

    def target_logprobs(self, prompts, targets):
        import torch

        from curator.data.format import encode_pair

        out = []
        for p, t in zip(prompts, targets):
            pi, ti = encode_pair(self.tok, p, t)
            ids = torch.tensor([pi + ti])
            with torch.no_grad():
                lp = torch.log_softmax(self.model(ids).logits[0, :-1].float(), -1)
            out.append(lp[len(pi) - 1 :, :].gather(1, ids[0, len(pi) :, None])[:, 0].numpy())
        return out

    def generate(self, prompts, n, params):
        import zlib

        outs = []
        for p in prompts:
            nums = re.findall(r"\d+", p)
            ans = sum(int(x) for x in nums)  # the tests' questions are "what is a + b"
            # answers change as the weights do, so test accuracy moves between checkpoints
            w = float(sum(q.detach().double().sum() for q in self.model.parameters() if q.requires_grad))
            h = zlib.crc32(f"{p}|{params.seed}|{w:.6f}".encode())
            outs.append([f" so #### {ans if (h >> j) % 3 else ans + 1}" for j in range(n)])
        return outs


@pytest.mark.slow  # loads and trains a tiny model (~10 s on an idle CPU)
def test_run_sweep_writes_runs_and_resumes(tmp_path):
    from curator.analysis.sweep import SweepConfig, run_sweep
    from curator.data.example import Example
    from curator.data.format import PromptFormat
    from curator.data.grading import get_grader
    from curator.dynamics.settings import DynamicsSettings, EvalSettings
    from curator.models.tiny import tiny_model, tiny_tokenizer
    from curator.recipes import SweepSettings
    from curator.training.settings import TrainSettings

    class Base:
        tokenizer = tiny_tokenizer()
        model = tiny_model(0, tokenizer=tokenizer)
        spec = "tiny-random"

    def ex(i):
        return Example.make(f"what is {i} + {i + 1}", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}", str(2 * i + 1))

    train, test = [ex(i) for i in range(6)], [ex(i) for i in range(50, 56)]
    logs = []
    config = SweepConfig(
        fmt=PromptFormat(),
        grader=get_grader("gsm8k"),
        training=TrainSettings(batch_size=3, max_length=64, lr_scheduler="linear"),
        grid=SweepSettings(learning_rates=[1e-3, 1e-2], epochs=[1, 2]),
        dynamics=DynamicsSettings(samples=2, max_new_tokens=8, p=1.5, lazy=False),
        evaluation=EvalSettings(max_new_tokens=8),
    )
    kw = dict(out_dir=tmp_path, progress=False, sampler_factory=_FakeSampler, echo=logs.append, p_grid=[1.2, 1.5])
    res = run_sweep(Base, train, test, config, **kw)
    assert [d.name for d in res.run_dirs] == ["lr0.001-ep1", "lr0.01-ep1", "lr0.001-ep2", "lr0.01-ep2"]
    tab = pd.read_csv(tmp_path / "lr0.01-ep2" / "checkpoints.csv")
    assert tab["checkpoint"].tolist() == [1, 2] and tab["step"].tolist() == [2, 4]
    for col in ("test_accuracy", "train_loss", "grad_variance", "dist_from_init"):
        assert tab[col].notna().all(), col
    assert (tab["dist_from_init"] > 0).all()
    conf = pd.read_parquet(tmp_path / "lr0.01-ep2" / "confidences.parquet")
    assert len(conf) == 2 * (6 + 6) and set(conf["split"]) == {"train", "test"}
    assert res.report.table.shape[0] == 1 + 1 + 2 + 2
    assert res.report.result("atc").fit is not None or res.report.result("atc").note
    assert (tmp_path / "predict" / "report.md").exists()
    # a rerun skips every finished configuration
    logs.clear()
    run_sweep(Base, train, test, config, **kw)
    assert sum("already done" in m for m in logs) == 4


def test_cli_predict(tmp_path):
    from click.testing import CliRunner

    from curator.cli.main import cli

    for r in planted_runs():
        write_run(r, tmp_path / "sweep" / r.name)
    res = CliRunner().invoke(
        cli,
        [
            "predict",
            "--sweep",
            str(tmp_path / "sweep"),
            "--p",
            "1.2",
            "--p-grid",
            "1.02,1.1",
            "--out",
            str(tmp_path / "out"),
            "--n-boot",
            "200",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "PreMemAcc (p=1.2)  R² 1.000  n=9" in res.output
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "p_sweep.png").exists()
    # bad input is one line and exit code 2 through `main`
    import subprocess
    import sys

    bad = tmp_path / "sweep" / "lr0" / "checkpoints.csv"
    pd.read_csv(bad).iloc[:2].to_csv(bad, index=False)
    proc = subprocess.run(
        [sys.executable, "-m", "curator.cli.main", "predict", "--sweep", str(tmp_path / "sweep")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: run 'lr0'") and "[3] are in the ledger" in proc.stderr


def test_sweep_recipes_validate():
    from curator.recipes import load_recipe

    for name in ("sweep-cpu", "sweep-gpu"):
        r = load_recipe(name)
        assert r.sweep.learning_rates and r.sweep.epochs and r.dynamics.lazy is False


@pytest.mark.slow  # MLflow's sqlite store takes ~10 s to set up
def test_runs_from_mlflow(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from curator.analysis.predict import runs_from_mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    ids = []
    for r in planted_runs():
        d = write_run(r, tmp_path / "local" / r.name)
        run = client.create_run(exp, run_name=r.name)
        client.log_artifacts(run.info.run_id, str(d), artifact_path="run")
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    other = client.create_run(exp, run_name="not-a-sweep-run")  # no ledger: skipped by experiment
    client.set_terminated(other.info.run_id)
    runs = runs_from_mlflow(experiment="sweep", tracking_uri=uri, artifact_path="run")
    assert sorted(r.name for r in runs) == ["lr0", "lr1", "lr2"]
    assert predict(runs, p=1.2, p_grid=[1.1]).result("premem").fit.r2 == pytest.approx(1.0)
    with pytest.raises(CuratorError, match="holds no ledger.parquet|cannot download"):
        runs_from_mlflow(run_ids=[other.info.run_id], tracking_uri=uri, artifact_path="run")
    with pytest.raises(CuratorError, match="experiment 'nope' not found"):
        runs_from_mlflow(experiment="nope", tracking_uri=uri)


def test_sweep_validation_before_any_model():
    from curator.analysis.sweep import validate_sweep
    from curator.data.example import Example
    from curator.data.format import PromptFormat
    from curator.data.grading import get_grader
    from curator.errors import ConfigError
    from curator.training.settings import TrainSettings

    train = [Example.make("q", "1 + 1 = 2\n#### 2", "2")]
    kw = dict(fmt=PromptFormat(), grader=get_grader("gsm8k"), train_settings=TrainSettings())
    with pytest.raises(ConfigError) as e:
        validate_sweep(train, [], learning_rates=[], epochs=[0], **kw)
    assert len(e.value.problems) == 3  # empty learning rates, epochs < 1, no test set
    with pytest.raises(DataError, match="do not grade as correct"):
        validate_sweep([Example.make("q", "#### 3", "2")], train, learning_rates=[1e-3], epochs=[1], **kw)
    validate_sweep(train, train, learning_rates=[1e-3], epochs=[1, 2], **kw)
