"""Ledger construction, validation and Parquet round trip."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from curator.dynamics.ledger import LEDGER_COLUMNS, Ledger, read_ledger
from curator.errors import DataError


def rows():
    out = []
    for cp in (1, 2):
        for eid, c, nll in (("a", 2, 0.5), ("b", 5, 0.05)):
            out.append(
                dict(
                    example_id=eid,
                    checkpoint=cp,
                    step=4 * cp,
                    epoch=float(cp),
                    n_samples=5,
                    n_correct=c,
                    target_nll=nll / cp,
                    target_tokens=12,
                    skip_reason=None,
                )
            )
    return out


def test_from_rows_fills_perplexity_and_memorized():
    led = Ledger.from_rows(rows(), p=1.105, k=5, lazy=False, model="tiny-random")
    assert list(led.df.columns[: len(LEDGER_COLUMNS)]) == list(LEDGER_COLUMNS)
    assert led.df["perplexity"].tolist() == pytest.approx(np.exp([0.5, 0.05, 0.25, 0.025]).tolist())
    assert led.df["memorized"].tolist() == [False, True, False, True]
    assert led.checkpoints == [1, 2] and led.example_ids == ["a", "b"] and led.k == 5
    assert led.is_complete
    assert led.pivot("n_correct").loc["b", 2] == 5


def test_parquet_round_trip_keeps_metadata_and_is_atomic(tmp_path):
    led = Ledger.from_rows(rows(), p=1.2, k=5, lazy=True, model="m", format={"prompt": "{question}"})
    led.df["loss"] = [1.0, 2.0, 3.0, 4.0]  # optional signal columns travel too
    path = led.to_parquet(tmp_path / "sub" / "ledger.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.parquet"]  # no temp file left
    md = pq.read_schema(path).metadata
    assert b"curator.ledger" in md
    back = read_ledger(path)
    assert back.meta["p"] == 1.2 and back.meta["model"] == "m" and back.meta["lazy"] is True
    assert back.meta["format"] == {"prompt": "{question}"} and back.meta["schema_version"] == 1
    pd.testing.assert_frame_equal(back.df, led.df)


def test_missing_column():
    bad = [{k: v for k, v in r.items() if k != "n_correct"} for r in rows()]
    with pytest.raises(DataError, match="missing column.*n_correct"):
        Ledger.from_rows(bad, p=1.1)


def test_duplicate_rows_named():
    r = rows() + [rows()[0]]
    with pytest.raises(DataError, match=r"duplicate \(example_id, checkpoint\) rows: \(a, 1\)"):
        Ledger.from_rows(r, p=1.1)


def test_nan_perplexity_names_rows():
    r = rows()
    r[3]["target_nll"] = float("nan")
    with pytest.raises(DataError, match=r"NaN.*\(b, 2\)"):
        Ledger.from_rows(r, p=1.1)


def test_mismatched_checkpoints():
    r = rows()[:3]  # b lacks checkpoint 2
    with pytest.raises(DataError, match="mismatched checkpoints.*example\\(s\\) b"):
        Ledger.from_rows(r, p=1.1)


def test_step_must_agree_within_checkpoint():
    r = rows()
    r[1]["step"] = 99
    with pytest.raises(DataError, match=r"checkpoint\(s\) \[1\] have rows with different step"):
        Ledger.from_rows(r, p=1.1)


def test_counts_validated():
    r = rows()
    r[0]["n_correct"] = 6
    with pytest.raises(DataError, match="n_correct <= n_samples"):
        Ledger.from_rows(r, p=1.1, k=5)
    r = rows()
    r[0]["n_samples"] = r[0]["n_correct"] = 0
    with pytest.raises(DataError, match="must give a skip_reason"):
        Ledger.from_rows(r, p=1.1, k=5)
    r = rows()
    r[0]["skip_reason"] = "memorized"
    with pytest.raises(DataError, match="fewer than k=5"):
        Ledger.from_rows(r, p=1.1, k=5)
    with pytest.raises(DataError, match="no 'k'"):
        Ledger.from_rows(r, p=1.1)


def test_from_arrays_import():
    nc = np.array([[1, 2], [3, 4], [0, 0]])
    nll = np.array([[0.3, 0.2], [0.2, 0.05], [1.0, 0.9]])
    led = Ledger.from_arrays(
        ["x", "y", "z"],
        nc,
        k=4,
        target_nll=nll,
        steps=[100, 200],
        epochs=[0.5, 1.0],
        target_tokens=[10, 20, 30],
        signals={"loss": nll * 2},
        p=1.105,
        model="other-trainer",
    )
    assert led.meta["k"] == 4 and led.meta["source"] == "import" and led.meta["model"] == "other-trainer"
    df = led.df.set_index(["example_id", "checkpoint"])
    assert df.loc[("y", 2), "n_correct"] == 4 and df.loc[("y", 2), "step"] == 200
    assert df.loc[("y", 2), "epoch"] == 1.0 and df.loc[("z", 1), "target_tokens"] == 30
    assert df.loc[("y", 2), "memorized"] and not df.loc[("y", 1), "memorized"]
    assert df.loc[("x", 1), "loss"] == pytest.approx(0.6)
    # from perplexities, with per-cell sample counts
    led2 = Ledger.from_arrays(["x", "y", "z"], nc, np.full((3, 2), 4), perplexity=np.exp(nll))
    np.testing.assert_allclose(led2.pivot("target_nll").to_numpy(), nll)
    assert led2.df["target_tokens"].isna().all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_correct=np.zeros((2, 2)), k=4, target_nll=np.zeros((3, 2))), r"n_correct has shape \[2, 2\]"),
        (
            dict(n_correct=np.zeros((3, 2)), k=4, target_nll=np.zeros((3, 3))),
            r"target_nll has shape \[3, 3\], expected \[3, 2\]",
        ),
        (dict(n_correct=np.zeros((3, 2)), target_nll=np.zeros((3, 2))), "give n_samples"),
        (dict(n_correct=np.zeros((3, 2)), k=4), "exactly one of target_nll or perplexity"),
        (dict(n_correct=np.zeros((3, 2)), k=4, target_nll=np.zeros((3, 2)), steps=[1, 2, 3]), "steps has 3 entries"),
        (dict(n_correct=np.zeros((3, 2)), k=4, perplexity=np.array([[1.5, np.nan]] * 3)), r"NaN.*\(x, 2\)"),
    ],
)
def test_from_arrays_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        Ledger.from_arrays(["x", "y", "z"], **kwargs)


def test_read_ledger_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_ledger(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        read_ledger(tmp_path / "junk.parquet")
    pd.DataFrame({"example_id": ["a"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="other.parquet: ledger is missing column"):
        read_ledger(tmp_path / "other.parquet")
