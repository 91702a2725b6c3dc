"""`curate premem` and `curate ledger`: summaries, errors before any model loads, end to end."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from launching import launch_cmd

from curator.cli.main import cli
from curator.dynamics.ledger import Ledger, read_ledger


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def write_ledger(tmp_path):
    led = Ledger.from_arrays(
        ["A", "B", "C", "D"],
        np.array([[1, 3, 2], [4, 5, 5], [5, 1, 4], [0, 2, 5]]),
        k=5,
        perplexity=np.array([[2.0, 1.5, 1.05], [1.1, 1.05, 1.01], [3.0, 2.0, 1.2], [3.0, 1.5, 1.0]]),
        steps=[10, 20, 30],
        p=1.105,
    )
    return led.to_parquet(tmp_path / "ledger.parquet")


def write_sums(tmp_path):
    """Six one-step sums a tiny model memorizes in a few epochs, as a jsonl file."""
    data = tmp_path / "train.jsonl"
    rows = [(1, 2), (3, 4), (2, 2), (5, 1), (6, 3), (7, 1)]
    data.write_text(
        "".join(
            json.dumps({"question": f"{a}+{b}?", "solution": f"{a}+{b}={a + b}\n#### {a + b}", "answer": str(a + b)})
            + "\n"
            for a, b in rows
        )
    )
    return data


def premem_args(data, out, batch_size):
    """`curate premem` on `data` for 6 epochs, 3 greedy samples per example, p = 1.3."""
    return [
        "premem",
        "--model",
        "tiny-random",
        "--data",
        str(data),
        "--epochs",
        "6",
        "--lr",
        "3e-3",
        "--batch-size",
        str(batch_size),
        "--samples",
        "3",
        "--temperature",
        "0",
        "--max-new-tokens",
        "24",
        "--p",
        "1.3",
        "--out",
        str(out),
    ]


def test_summary_from_ledger(tmp_path):
    path = write_ledger(tmp_path)
    for args in (["premem", "--ledger", str(path)], ["ledger", "show", str(path)]):
        r = invoke(args)
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0] == "4 examples, 3 checkpoints, p=1.105, k=5"
        # checkpoint, step, epoch, PreMemAcc, train acc, memorized, mean ppl, samples
        assert lines[3].split() == ["1", "10", "1.00", "0.300", "0.500", "0.250", "2.2750", "20"]
        assert lines[5].split()[3:6] == ["0.400", "0.800", "0.750"]
    r = invoke(["premem", "--ledger", str(path), "--p", "1.08"])
    assert r.output.splitlines()[3].split()[3] == "0.500"  # B counts: (.2 + .8 + 1 + 0) / 4


def test_ledger_show_csv_and_import(tmp_path):
    path = write_ledger(tmp_path)
    r = invoke(["ledger", "show", str(path), "--csv", str(tmp_path / "s.csv")])
    assert r.exit_code == 0 and (tmp_path / "s.csv").read_text().startswith("checkpoint,step,epoch,premem_acc")
    np.savez(
        tmp_path / "run.npz",
        example_ids=np.array(["x", "y"]),
        n_correct=np.array([[1, 2], [0, 4]]),
        perplexity=np.array([[1.5, 1.2], [2.0, 1.01]]),
    )
    r = invoke(
        [
            "ledger",
            "import",
            str(tmp_path / "run.npz"),
            str(tmp_path / "imp.parquet"),
            "--k",
            "4",
            "--model",
            "elsewhere",
        ]
    )
    assert r.exit_code == 0, r.output
    led = read_ledger(tmp_path / "imp.parquet")
    assert led.meta["model"] == "elsewhere" and led.pivot("n_correct").loc["y", 2] == 4


def test_errors_before_any_model_loads(tmp_path, monkeypatch):
    import curator.models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(curator.models, "load_model", boom)
    base = ["premem", "--model", "tiny-random", "--data", "synthetic", "--n", "4", "--out", str(tmp_path)]
    for extra, msg in (
        (["--p", "1.0"], "p must be a number > 1"),
        (["--samples", "0"], "k) must be an integer >= 1"),
        (["--checkpoint-every", "1000"], "produces no checkpoint"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--full", "--defer"], "--full and --defer contradict"),
    ):
        r = invoke(base + extra)
        assert r.exit_code != 0 and msg in str(r.exception), (extra, r.output, r.exception)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "1+1?", "solution": "1+1=2\\n#### 3", "answer": "2"}\n'
        '{"question": "2+2?", "solution": "2+2=4\\n#### 4", "answer": "4"}\n'
    )
    r = invoke(["premem", "--model", "tiny-random", "--data", str(bad), "--out", str(tmp_path)])
    assert "1 of 2 reference solutions do not grade" in str(r.exception)
    r = invoke(["premem", "--model", "tiny-random"])
    assert "give --model and --data" in str(r.exception)


def test_exit_code_2(tmp_path):
    from curator.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["premem", "--model", "tiny-random", "--data", "synthetic", "--p", "0.5"])
    assert e.value.code == 2


@pytest.mark.slow
def test_premem_end_to_end_tiny_model(tmp_path):
    data = write_sums(tmp_path)
    out = tmp_path / "run"
    r = invoke(premem_args(data, out, 2) + ["--save-model", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    led = read_ledger(out / "ledger.parquet")
    assert led.checkpoints == [1, 2, 3, 4, 5, 6] and len(led.example_ids) == 6
    assert led.meta["lazy"] is True and led.meta["p"] == 1.3 and led.meta["model"] == "tiny-random"
    assert led.meta["train"]["epochs"] == 6
    assert {"train_loss", "dist_from_init"} <= set(led.df.columns)
    summary_csv = (out / "summary.csv").read_text().splitlines()
    assert len(summary_csv) == 7
    lines = r.output.splitlines()
    assert lines[0].startswith("6 examples from") and "lazy tracking" in lines[0]
    table_top = next(i for i, ln in enumerate(lines) if ln.startswith("6 examples, 6 checkpoints"))
    assert lines[table_top + 1].split()[:4] == ["checkpoint", "step", "epoch", "PreMemAcc"]
    # the printed final PreMemAcc is the ledger's (determined at the final checkpoint)
    from curator.dynamics.metrics import dataset_premem

    assert lines[table_top + 8].split()[3] == f"{dataset_premem(led).iloc[-1]:.3f}"

    # --save-model writes a loadable model that reproduces the tracked model's target scores
    from curator.models import load_model
    from curator.sampling.hf import HFSampler

    saved = load_model(str(out / "model"))
    nll, _ = HFSampler(saved.model, saved.tokenizer).target_nll(["1+2?\nAnswer:"], [" 1+2=3\n#### 3\nDone."])
    from curator.data.example import content_id

    final = led.df[(led.df.checkpoint == 6)].set_index("example_id")["target_nll"]
    assert abs(nll[0] - final[content_id("1+2?", "1+2=3\n#### 3")]) < 1e-4

    # --defer: the same training (seeded), the same final PreMemAcc per example, fewer samples
    r = invoke(premem_args(data, tmp_path / "deferred", 2) + ["--defer", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "deferred lazy tracking" in r.output.splitlines()[0]
    assert any(ln.startswith("6 examples, 6 checkpoints, p=1.3, k=3, deferred lazy") for ln in r.output.splitlines())
    ld = read_ledger(tmp_path / "deferred" / "ledger.parquet")
    from curator.dynamics.metrics import premem_acc

    assert ld.meta["defer"] is True
    assert premem_acc(ld)[6].to_dict() == premem_acc(led)[6].to_dict()
    assert ld.df.n_samples.sum() <= led.df.n_samples.sum()


@pytest.mark.slow
def test_premem_under_two_process_accelerate_launch(tmp_path):
    """`curate premem` runs unchanged under `accelerate launch` (2 CPU processes, gloo): every rank
    trains and measures its share, rank 0 writes the ledger, which equals one process's; deferred
    tracking loads earlier weights into every rank's model and restores them, and gives the same
    final PreMemAcc as lazy tracking of the same (seeded) run."""
    import os
    import subprocess

    from curator.dynamics.metrics import premem_acc

    data = write_sums(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CURATOR_QUIET="1")
    ledgers = {}
    for mode in ("lazy", "defer"):
        out = tmp_path / mode
        cmd = launch_cmd(2, ["-m", "curator.cli.main", *premem_args(data, out, 1), "--quiet"])
        proc = subprocess.run(
            cmd + (["--defer"] if mode == "defer" else []),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("examples from") == 1  # the header is printed once, by rank 0
        ledgers[mode] = read_ledger(out / "ledger.parquet")
    lazy, defer = ledgers["lazy"], ledgers["defer"]
    # every rank measured its share: the ledger equals one process with the same global batch (2)
    one = tmp_path / "one"
    r = invoke(premem_args(data, one, 2) + ["--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    single = read_ledger(one / "ledger.parquet")
    assert single.df["n_correct"].tolist() == lazy.df["n_correct"].tolist()
    assert single.df["n_samples"].tolist() == lazy.df["n_samples"].tolist()
    assert (single.df["target_nll"] - lazy.df["target_nll"]).abs().max() < 1e-4
    assert defer.meta["defer"] is True and defer.meta["train"]["epochs"] == 6
    assert lazy.df.step.max() == 18  # 6 examples / (2 processes x batch 1) = 3 steps per epoch
    assert premem_acc(defer)[6].to_dict() == premem_acc(lazy)[6].to_dict()
    assert defer.df.n_samples.sum() < lazy.df.n_samples.sum()
