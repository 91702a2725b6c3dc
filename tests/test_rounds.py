"""RoundStore: the one definition of a strategy's round layout (read by the loop, compare, export)."""

import json

import pytest

from curator.errors import DataError
from curator.rounds import RoundStore


def _plant(sdir, r, n_train, done=True):
    rd = sdir / f"round-{r:02d}"
    rd.mkdir(parents=True)
    (rd / "metrics.json").write_text(json.dumps({"round": r, "n_train": n_train}))
    (rd / "next_train_ids.json").write_text(json.dumps([f"e{i}" for i in range(n_train + 2)]))
    if done:
        (rd / "DONE").write_text("")


def test_finished_rounds_in_order_and_read_back(tmp_path):
    sdir = tmp_path / "iid"
    for r in (0, 1, 2, 10):  # 10 after 2: numeric order, not the names' order
        _plant(sdir, r, n_train=4 * (r + 1))
    _plant(sdir, 11, n_train=48, done=False)  # half-done: no DONE
    (sdir / "round-xx").mkdir()  # not a round
    (sdir / "run.json").write_text("{}")
    store = RoundStore(sdir)
    assert store.finished() == [0, 1, 2, 10]
    assert store.is_done(10) and not store.is_done(11) and not store.is_done(3)
    assert store.round_dir(2) == sdir / "round-02"
    assert store.metrics(1) == {"round": 1, "n_train": 8}
    assert store.next_train_ids(0) == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert store.new_examples(0) == []  # no generator in that round


def test_no_rounds_yet(tmp_path):
    assert RoundStore(tmp_path / "missing").finished() == []
    assert RoundStore(tmp_path).finished() == []


def test_damaged_metrics_is_one_line_naming_the_file(tmp_path):
    _plant(tmp_path, 0, n_train=4)
    path = tmp_path / "round-00" / "metrics.json"
    path.write_text('{"n_train": 4,')  # cut short
    with pytest.raises(DataError) as e:
        RoundStore(tmp_path).metrics(0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path} is damaged (not valid JSON: ")


def test_finish_writes_metrics_then_done_and_readers_agree(tmp_path):
    store = RoundStore(tmp_path)
    store.start(0)
    store.write_round_outputs(0, ["a", "b"], [{"step": 1}])
    assert store.finished() == []  # everything but DONE is written: still unfinished
    store.finish(0, {"n_train": 2, "test_accuracy": 0.5})
    assert store.finished() == [0]
    assert store.metrics(0) == {"n_train": 2, "test_accuracy": 0.5}
    assert store.next_train_ids(0) == ["a", "b"]
    assert [p.name for p in store.artifacts(0)] == ["metrics.json", "checkpoints.json"]
    assert not store.is_logged(0)
    store.mark_logged(0)
    assert store.is_logged(0)
    assert sorted(p.name for p in store.round_dir(0).iterdir()) == [
        "DONE",
        "LOGGED",
        "checkpoints.json",
        "metrics.json",
        "next_train_ids.json",
    ]
