"""Importing per-example arrays from other trainers into a ledger: round trips and every error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curator.analysis.imports import import_arrays, import_ledger, import_long
from curator.dynamics import metrics
from curator.dynamics.ledger import read_ledger
from curator.errors import DataError

IDS = ["a", "b", "c"]
NC = np.array([[0, 2, 4], [1, 1, 3], [4, 4, 4]])
PPL = np.array([[3.0, 1.5, 1.1], [2.0, 1.9, 1.3], [1.2, 1.05, 1.01]])


def arrays(**changes):
    base = {
        "example_ids": np.array(IDS),
        "n_correct": NC,
        "k": np.array(4),
        "perplexity": PPL,
        "steps": np.array([5, 10, 15]),
        "epochs": np.array([1.0, 2.0, 3.0]),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def check_ledger(led):
    df = led.df
    assert led.example_ids == IDS and led.checkpoints == [1, 2, 3]
    np.testing.assert_array_equal(led.pivot("n_correct").to_numpy(), NC)
    np.testing.assert_array_equal(led.pivot("n_samples").to_numpy(), np.full((3, 3), 4))
    np.testing.assert_allclose(led.pivot("perplexity").to_numpy(), PPL)
    np.testing.assert_allclose(led.pivot("target_nll").to_numpy(), np.log(PPL))
    assert led.checkpoint_info()["step"].tolist() == [5, 10, 15]
    assert df["skip_reason"].isna().all()


def test_npz_round_trip(tmp_path):
    np.savez(tmp_path / "run.npz", **arrays())
    led = import_ledger(tmp_path / "run.npz", p=1.2, model="other-trainer")
    check_ledger(led)
    assert led.meta["model"] == "other-trainer" and led.meta["p"] == 1.2
    # the imported ledger gives the PreMemAcc one computes by hand (p = 1.2):
    # a: acc 0, .5, 1; masked 0, .5, 0 (1.1 <= 1.2) -> running max 0, .5, .5 -> min with acc: 0, .5, .5
    # b: acc .25, .25, .75; nothing memorized -> .25, .25, .75
    # c: perplexity 1.2 <= 1.2 at checkpoint 1: masked 0 throughout -> 0, 0, 0
    pm = metrics.premem_acc(led, 1.2)
    np.testing.assert_allclose(pm.to_numpy(), [[0, 0.5, 0.5], [0.25, 0.25, 0.75], [0, 0, 0]])
    # and survives a Parquet round trip
    led.to_parquet(tmp_path / "ledger.parquet")
    check_ledger(read_ledger(tmp_path / "ledger.parquet"))


def test_acc_and_target_nll_variant():
    led = import_arrays(arrays(n_correct=None, acc=NC / 4, perplexity=None, target_nll=np.log(PPL), k=None), k=4)
    check_ledger(led)


def test_per_cell_samples_and_signals():
    ns = np.array([[4, 4, 4], [2, 2, 4], [4, 4, 4]])
    loss = np.arange(9.0).reshape(3, 3)
    led = import_arrays(
        arrays(k=None, n_samples=ns, n_correct=np.minimum(NC, ns), loss=loss, target_tokens=np.array([7, 8, 9]))
    )
    np.testing.assert_array_equal(led.pivot("n_samples").to_numpy(), ns)
    np.testing.assert_allclose(led.pivot("loss").to_numpy(), loss)
    assert led.pivot("target_tokens").iloc[:, 0].tolist() == [7, 8, 9]


def test_long_csv_and_json_round_trip(tmp_path):
    rows = [
        {
            "example_id": e,
            "checkpoint": m + 1,
            "step": 5 * (m + 1),
            "epoch": m + 1.0,
            "acc": NC[i, m] / 4,
            "perplexity": PPL[i, m],
        }
        for i, e in enumerate(IDS)
        for m in range(3)
    ]
    df = pd.DataFrame(rows).sample(frac=1, random_state=0)  # row order must not matter
    df.to_csv(tmp_path / "run.csv", index=False)
    led = import_ledger(tmp_path / "run.csv", k=4)
    # rows were shuffled: examples come in first-seen order, so compare by id
    assert sorted(led.example_ids) == IDS
    np.testing.assert_array_equal(led.pivot("n_correct").loc[IDS].to_numpy(), NC)
    (tmp_path / "run.json").write_text(json.dumps(rows))
    check_ledger(import_ledger(tmp_path / "run.json", k=4))
    (tmp_path / "run.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    check_ledger(import_ledger(tmp_path / "run.jsonl", k=4))


@pytest.mark.parametrize(
    "changes,msg",
    [
        ({"n_correct": NC[:, :2]}, r"perplexity has shape \[3, 3\] but n_correct has \[3, 2\]"),
        ({"n_correct": NC[:2]}, r"n_correct has shape \[2, 3\], expected \[3, checkpoints\]"),
        ({"steps": np.array([1, 2])}, r"steps has shape \[2\], expected \[3\]"),
        ({"example_ids": np.array(["a", "b", "a"])}, r"1 duplicate example id\(s\), e.g. \['a'\]"),
        ({"acc": NC / 4}, "exactly one of 'n_correct' or 'acc' \\(got both\\)"),
        ({"perplexity": None}, "exactly one of 'perplexity' or 'target_nll' \\(got neither\\)"),
        ({"n_correct": None, "acc": NC / 3, "k": np.array(4)}, "acc must lie in"),
        ({"n_correct": None, "acc": NC / 4 * 0.9}, "not a whole number at example 'a', checkpoint 2"),
        ({"k": None}, "give 'n_samples'"),
        ({"example_ids": None}, "missing 'example_ids'"),
        ({"junk": np.zeros(5)}, "unknown key 'junk' with shape \\[5\\]"),
    ],
)
def test_array_errors(changes, msg):
    with pytest.raises(DataError, match=msg):
        import_arrays(arrays(**changes))


def test_nan_perplexity_error_and_drop():
    ppl = PPL.copy()
    ppl[1, 2] = np.nan
    with pytest.raises(DataError, match=r"1 NaN/inf entries in 1 example\(s\), e.g. \(b, checkpoint 3\)"):
        import_arrays(arrays(perplexity=ppl))
    led = import_arrays(arrays(perplexity=ppl, loss=np.ones((3, 3))), drop_nan=True)
    assert led.example_ids == ["a", "c"] and led.meta["import_dropped"] == ["b"]
    np.testing.assert_array_equal(led.pivot("n_correct").to_numpy(), NC[[0, 2]])
    all_nan = np.full((3, 3), np.nan)
    with pytest.raises(DataError, match="every example has a NaN"):
        import_arrays(arrays(perplexity=all_nan), drop_nan=True)


def test_long_errors(tmp_path):
    base = pd.DataFrame(
        [
            {"example_id": e, "checkpoint": m + 1, "n_correct": NC[i, m], "perplexity": PPL[i, m]}
            for i, e in enumerate(IDS)
            for m in range(3)
        ]
    )
    with pytest.raises(DataError, match="lack rows at some of the 3 checkpoints, e.g. \\['b'\\]"):
        import_long(base.drop(index=4), k=4)
    with pytest.raises(DataError, match="duplicate \\(example_id, checkpoint\\)"):
        import_long(pd.concat([base, base.iloc[:1]]), k=4)
    with pytest.raises(DataError, match="numbered 1..M.*\\[0, 1, 2\\]"):
        import_long(base.assign(checkpoint=base["checkpoint"] - 1), k=4)
    with pytest.raises(DataError, match="missing column 'checkpoint'"):
        import_long(base.drop(columns="checkpoint"), k=4)
    with pytest.raises(DataError, match=r"checkpoint\(s\) \[2\] have more than one step"):
        import_long(base.assign(step=[1, 2, 3, 1, 9, 3, 1, 2, 3]), k=4)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match="unknown format '.txt'"):
        import_ledger(tmp_path / "x.txt")
    with pytest.raises(DataError, match="file not found"):
        import_ledger(tmp_path / "missing.npz")
