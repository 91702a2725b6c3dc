"""The peer strategies `learnability` and `s2l`: planted answers, exact scores."""

from __future__ import annotations

import numpy as np
import pytest

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.signals import Signals
from curator.strategy import SelectionContext, build_strategy, run_selection
from strategies.learnability import pass_rate
from strategies.s2l import balanced_sample, kmeans


def ex(i: str) -> Example:
    return Example(id=i, question=f"question {i}", solution="step\n#### 7", answer="7")


class Completions:
    """A sampler whose completions come from a table keyed by prompt."""

    def __init__(self, table):
        self.table = table

    def generate(self, prompts, n, params):
        return [list(self.table[p])[:n] for p in prompts]


class Grader:
    def extract(self, completion):
        return completion.split("####")[-1].strip() if "####" in completion else None


# -- learnability --------------------------------------------------------------------------------
def test_learnability_takes_the_candidates_solved_about_half_the_time():
    fmt = PromptFormat()
    pool = [ex(f"c{i}") for i in range(5)]
    right, wrong = "so #### 7", "so #### 8"
    table = {
        "c0": [right] * 4,  # p = 1: nothing to learn
        "c1": [wrong] * 4,  # p = 0: out of reach
        "c2": [right, wrong, right, wrong],  # p = 1/2: planted best, score 0.25
        "c3": [right, wrong, wrong, "no answer"],  # p = 1/4: 0.1875
        "c4": [right, right, right, "7.0 #### 7.0"],  # p = 1 ("7.0" is 7): 0
    }
    sig = Signals(sampler=Completions({fmt.prompt_text(e): table[e.id] for e in pool}), grader=Grader(), key="r0")
    sel = run_selection(build_strategy("learnability", {"n": 4}), SelectionContext(pool=pool, signals=sig), 2)
    assert sel.ids == ["c2", "c3"]
    assert sel.scores == pytest.approx({"c0": 0.0, "c1": 0.0, "c2": 0.25, "c3": 0.1875, "c4": 0.0})


def test_pass_rate_counts_missing_answers_as_wrong():
    from curator.data.grading import get_grader

    g = get_grader("auto")
    assert pass_rate(["7", None, "7.00", "8"], "7", g) == 0.5
    assert pass_rate([], "7", g) == 0.0


def test_learnability_refuses_a_single_sample():
    from curator.errors import StrategyError

    with pytest.raises(StrategyError, match="n=1"):
        build_strategy("learnability", {"n": 1})


# -- s2l -----------------------------------------------------------------------------------------
def test_kmeans_separates_planted_clusters():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [5.0, 5.1]])
    labels = kmeans(X, 2, np.random.default_rng(0))
    assert labels[0] == labels[1] != labels[2] == labels[3] == labels[4]


def test_balanced_sample_gives_small_groups_all_and_splits_the_rest_evenly():
    groups = [np.array([0]), np.arange(1, 6), np.arange(6, 11)]
    picks = balanced_sample(groups, 7, np.random.default_rng(0))
    # smallest first: share 7 // 3 = 2 but it holds 1; then 6 // 2 = 3 each
    assert len(picks) == len(set(picks)) == 7
    assert 0 in picks
    assert sum(1 <= p <= 5 for p in picks) == 3 and sum(p >= 6 for p in picks) == 3


def _s2l_setup():
    """Two trajectory types among the training set; the pool has 6 candidates near a fast learner
    and 2 near a slow one."""
    train = [ex(f"t{i}") for i in range(4)]
    # target NLL at 3 checkpoints: t0, t1 learned fast; t2, t3 stay high (the planted minority type)
    nll = np.array([[3.0, 0.2, 0.1], [3.1, 0.3, 0.1], [3.0, 2.9, 2.8], [3.2, 2.8, 2.9]])
    ledger = Ledger.from_arrays([e.id for e in train], np.zeros((4, 3), int), k=4, target_nll=nll, p=1.105)
    pool = [ex(f"a{i}") for i in range(6)] + [ex("b0"), ex("b1")]
    vec = {"t0": [1, 0, 0], "t1": [0.9, 0.1, 0], "t2": [0, 0, 1], "t3": [0, 0.1, 0.9]}
    vec.update({f"a{i}": [1, 0.05 * i, 0] for i in range(6)})
    vec.update({"b0": [0, 0.05, 1], "b1": [0, 0.1, 1]})
    sig = Signals()
    ids = list(vec)
    V = np.array([vec[i] for i in ids], np.float32)
    sig.put("embeddings", ids, V / np.linalg.norm(V, axis=1, keepdims=True))
    return pool, train, ledger, sig


def test_s2l_spends_the_budget_evenly_over_trajectory_clusters():
    pool, train, ledger, sig = _s2l_setup()
    for seed in range(5):
        ctx = SelectionContext(
            pool=list(pool), train=train, ledger=ledger, signals=sig, rng=np.random.default_rng(seed)
        )
        sel = run_selection(build_strategy("s2l", {"clusters": 2}), ctx, 4)
        # the 2 candidates of the slow cluster are both taken (i.i.d. would take 1 on average)
        assert {"b0", "b1"} <= set(sel.ids) and sum(i.startswith("a") for i in sel.ids) == 2
        assert sorted(sel.scores.values(), reverse=True)[:4] == [4, 3, 2, 1]
        ctx = SelectionContext(
            pool=list(pool), train=train, ledger=ledger, signals=sig, rng=np.random.default_rng(seed)
        )
        two = run_selection(build_strategy("s2l", {"clusters": 2}), ctx, 2).ids
        assert sorted(i[0] for i in two) == ["a", "b"]


def test_s2l_without_a_ledger_samples_uniformly_and_says_so():
    pool = [ex(f"c{i}") for i in range(10)]
    sel = run_selection(build_strategy("s2l"), SelectionContext(pool=pool, signals=Signals()), 3)
    assert len(sel.ids) == 3 and "no ledger" in sel.note
