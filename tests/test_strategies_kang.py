"""Kang et al.'s loop as run: ifd, long-solution, random-variants, the generator-mode rule (variants
of the parents each strategy picks from the training set) and budgets as multiples of the seed set.

Planted answers, hand-computed: every expected id, call and score below follows from the numbers
written next to it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from launching import VariantSource

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.errors import ConfigError, StrategyError
from curator.recipes import recipe_from_dict
from curator.signals import Signals
from curator.strategy import SelectionContext, build_strategy, run_selection
from strategies.ifd import ifd_scores
from strategies.long_solution import solution_lines

D = 8


def ex(i: str, lines: int = 1) -> Example:
    """An example whose solution has ``lines`` reasoning lines before the answer line."""
    steps = "".join(f"step {j} of {i}\n" for j in range(lines))
    return Example(id=i, question=f"question {i}", solution=f"{steps}#### 1", answer="1", meta={})


def axis(j: int, extra: tuple = ()) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[j] = 1.0
    for a, val in extra:
        v[a] += val
    return v


def ledger(ids, final_correct, k=4, nll=None) -> Ledger:
    """Two checkpoints, never memorized (perplexity 3 > p): PreMemAcc = final accuracy."""
    nc = np.array([[0, c] for c in final_correct])
    if nll is not None:
        return Ledger.from_arrays(ids, nc, k=k, target_nll=np.asarray(nll, float), p=1.105)
    return Ledger.from_arrays(ids, nc, k=k, perplexity=np.full(nc.shape, 3.0), p=1.105)


IID_POOL = [ex(f"iid{i}") for i in range(3)]  # the loop's fresh i.i.d. candidates in generator mode


def gen_ctx(train, *, led=None, sig=None, seed=0, src=None) -> SelectionContext:
    return SelectionContext(
        pool=list(IID_POOL),
        train=list(train),
        ledger=led,
        signals=sig or Signals(key="m"),
        rng=np.random.default_rng(seed),
        source=src if src is not None else VariantSource(),
    )


# -- ifd ------------------------------------------------------------------------------------------
def test_ifd_scores_hand_computed():
    cond = np.array([0.5, 2.0, 1.0, 0.3, np.nan, 1.0])
    direct = np.array([1.0, 1.0, 2.0, 0.0, 1.0, 1.0])
    # 0.5/1; 2/1 > 1 dropped; 1/2; 0.3/0 undefined; empty target; exactly 1 is kept (the paper drops > 1)
    assert ifd_scores(cond, direct).tolist() == [0.5, -math.inf, 0.5, -math.inf, -math.inf, 1.0]


class PlantedLogprobs:
    """target_logprobs from a table keyed by (prompt, target); records what was scored."""

    def __init__(self, table):
        self.table, self.seen = table, []

    def target_logprobs(self, prompts, targets):
        self.seen.extend(zip(prompts, targets))
        return [np.asarray(self.table[(p, t)], np.float32) for p, t in zip(prompts, targets)]


def ifd_world():
    fmt = PromptFormat()
    pool = [ex(i) for i in ("a", "b", "c", "d")]
    # (conditioned token log-probs, question-free token log-probs) -> mean NLLs -> IFD
    planted = {
        "a": ([-0.2, -0.4], [-0.6, -0.6]),  # 0.3 / 0.6 = 0.5
        "b": ([-0.9, -0.9], [-1.0, -1.0]),  # 0.9 / 1.0 = 0.9: the highest kept
        "c": ([-1.2, -1.2], [-1.0, -1.0]),  # 1.2 / 1.0 > 1: the question hurts, dropped
        "d": ([-0.2, -0.2], [-1.0, -1.0]),  # 0.2
    }
    table = {}
    for e in pool:
        cond, direct = planted[e.id]
        table[(fmt.prompt_text(e), fmt.target_text(e))] = cond
        table[("\nAnswer:", fmt.target_text(e))] = direct  # the template with the question left empty
    return pool, PlantedLogprobs(table)


def test_ifd_ranks_by_loss_ratio_and_drops_pairs_above_one():
    pool, sampler = ifd_world()
    sig = Signals(sampler=sampler, key="r0")
    sel = run_selection(build_strategy("ifd"), SelectionContext(pool=list(pool), signals=sig), 3)
    assert sel.ids == ["b", "a", "d"]  # c has the largest ratio but is above 1
    assert sel.scores["b"] == pytest.approx(0.9) and sel.scores["a"] == pytest.approx(0.5)
    assert sel.scores["c"] == -math.inf
    # both losses score exactly the training target; the question-free prompt is the bare template
    targets = {t for _, t in sampler.seen}
    assert targets == {PromptFormat().target_text(e) for e in pool}
    assert sum(p == "\nAnswer:" for p, _ in sampler.seen) == 4 and len(sampler.seen) == 8


def test_question_free_losses_are_cached_apart_from_conditioned_ones():
    pool, sampler = ifd_world()
    sig = Signals(sampler=sampler, key="r0")
    assert sig.losses(pool[:1]).tolist() == pytest.approx([0.3])
    assert sig.losses(pool[:1], given_question=False).tolist() == pytest.approx([0.6])
    assert sig.losses(pool[:1], given_question=False).tolist() == pytest.approx([0.6])  # cached
    assert len(sampler.seen) == 2 and sig.stats["losses"] == {"computed": 2, "cached": 1}


# -- long-solution ---------------------------------------------------------------------------------
def test_solution_lines_counts_line_breaks_as_kang():
    assert solution_lines("#### 4") == 0
    assert solution_lines("a = 1\nb = 2\n#### 2") == 2


def test_long_solution_takes_the_most_lines_first():
    pool = [ex("one", 1), ex("three", 3), ex("two", 2), ex("zero", 0)]
    sel = run_selection(build_strategy("long-solution"), SelectionContext(pool=pool), 2)
    assert sel.ids == ["three", "two"]
    assert sel.scores == {"one": 1.0, "three": 3.0, "two": 2.0, "zero": 0.0}


# -- random-variants (pool mode) --------------------------------------------------------------------
def test_random_variants_pool_mode_takes_neighbours_of_training_examples_in_random_order():
    train = [ex(f"t{i}") for i in range(4)]
    pool = [ex(f"c{i}") for i in range(4)] + [ex("far")]
    vecs = {f"t{i}": axis(i) for i in range(4)}
    vecs.update({f"c{i}": axis(i, ((5, 0.1 * (i + 1)),)) for i in range(4)})
    vecs["far"] = axis(6)
    sig = Signals(key="m")
    sig.put("embeddings", list(vecs), np.stack(list(vecs.values())))
    ctx = SelectionContext(pool=pool, train=train, signals=sig, rng=np.random.default_rng(0))
    sel = run_selection(build_strategy("random-variants"), ctx, 4)
    # default_rng(0).permutation(4) = [2, 0, 1, 3]: each training example's nearest, in that order
    assert sel.ids == ["c2", "c0", "c1", "c3"]
    assert sel.scores["far"] == pytest.approx(0.0, abs=1e-6)


# -- the generator-mode rule -------------------------------------------------------------------------
TRAIN4 = [ex("t1", 1), ex("t2", 2), ex("t3", 3), ex("t4", 4)]


def test_generator_mode_makes_variants_of_the_top_scored_training_examples():
    ctx = gen_ctx(TRAIN4)
    sel = run_selection(build_strategy("long-solution"), ctx, 5)
    # parents = ceil(0.75 * 4) = 3 longest: t4, t3, t2; ceil(5 / 3) = 2 variants each, spread evenly
    assert ctx.source.calls == [(["t4", "t3", "t2"], 2)]
    assert sel.ids == ["t4-v0", "t3-v0", "t2-v0", "t4-v1", "t3-v1"]
    assert [sel.scores[i] for i in sel.ids] == [4.0, 3.0, 2.0, 4.0, 3.0]  # the parent's score
    assert all(math.isnan(sel.scores[e.id]) for e in IID_POOL)  # i.i.d. candidates: not drawn from
    assert [x.meta["parent_id"] for x in sel.examples] == ["t4", "t3", "t2", "t4", "t3"]


def test_generator_mode_with_more_parents_than_budget_gives_a_random_k_one_each():
    picks = set()
    for seed in range(6):
        ctx = gen_ctx(TRAIN4, seed=seed)
        sel = run_selection(build_strategy("long-solution", {"parents": 1.0}), ctx, 2)
        ((parents, n_per),) = ctx.source.calls
        assert n_per == 1 and len(parents) == 2
        # the chosen two keep the strategy's order (longest first)
        order = [p.id for p in reversed(TRAIN4)]
        assert parents == sorted(parents, key=order.index)
        assert sel.ids == [f"{p}-v0" for p in parents]
        picks.add(tuple(parents))
    assert len(picks) > 1  # not always the top two: uniform over the kept ones, as Kang draws


def test_generator_mode_loss_uses_training_losses():
    sig = Signals(key="m")
    sig.put("losses", [t.id for t in TRAIN4], [0.1, 0.9, 0.5, 0.3])
    ctx = gen_ctx(TRAIN4, sig=sig)
    sel = run_selection(build_strategy("loss"), ctx, 5)
    assert ctx.source.calls == [(["t2", "t3", "t4"], 2)]  # the 3 (of 4) highest losses: 0.9, 0.5, 0.3
    assert sel.ids == ["t2-v0", "t3-v0", "t4-v0", "t2-v1", "t3-v1"]
    assert sel.scores["t2-v1"] == pytest.approx(0.9) and sel.scores["t4-v0"] == pytest.approx(0.3)


def test_generator_mode_ifd_never_takes_a_pair_above_one_as_parent():
    pool, sampler = ifd_world()
    sig = Signals(sampler=sampler, key="r0")
    ctx = gen_ctx(pool, sig=sig)
    sel = run_selection(build_strategy("ifd", {"parents": 1.0}), ctx, 3)
    # all of the training set may be parents, but c (IFD 1.2) is ruled out: b, a, d by IFD
    assert ctx.source.calls == [(["b", "a", "d"], 1)]
    assert sel.ids == ["b-v0", "a-v0", "d-v0"]


def test_generator_mode_premem_keeps_premem_at_or_below_threshold():
    # k = 4 samples: PreMemAcc 0.75, 1, 0.5, 1; t <= 0.75 keeps 0.5 and 0.75 (Kang's code uses <=)
    led = ledger([t.id for t in TRAIN4], [3, 4, 2, 4])
    ctx = gen_ctx(TRAIN4, led=led)
    sel = run_selection(build_strategy("premem-threshold"), ctx, 4)
    assert ctx.source.calls == [(["t3", "t1"], 2)]  # lowest PreMemAcc first
    assert sel.ids == ["t3-v0", "t1-v0", "t3-v1", "t1-v1"]
    assert sel.scores["t3-v0"] == pytest.approx(0.5) and sel.scores["t1-v1"] == pytest.approx(0.25)


def test_generator_mode_random_variants_draws_from_the_whole_training_set():
    ctx = gen_ctx(TRAIN4, seed=0)
    sel = run_selection(build_strategy("random-variants"), ctx, 8)
    # default_rng(0).permutation(4) = [2, 0, 1, 3]; every training example a parent, 2 variants each
    assert ctx.source.calls == [(["t3", "t1", "t2", "t4"], 2)]
    assert sel.ids[:4] == ["t3-v0", "t1-v0", "t2-v0", "t4-v0"] and len(sel.ids) == 8


def test_generator_mode_s2l_draws_parents_evenly_over_trajectory_clusters():
    # t1 learns fast (loss 2 -> 0.1), t2-t4 slowly (2 -> ~1.9): clusters of 1 and 3. S2L's balanced
    # draw of ceil(0.75 * 4) = 3 parents takes the small cluster's share first: t1 always, then 2
    # of the slow three (a uniform draw would miss t1 a quarter of the time)
    nll = [[2.0, 0.1], [2.0, 1.9], [2.0, 1.88], [2.0, 1.91]]
    led = ledger([t.id for t in TRAIN4], [0, 0, 0, 0], nll=nll)
    for seed in range(8):
        ctx = gen_ctx(TRAIN4, led=led, seed=seed)
        run_selection(build_strategy("s2l", {"clusters": 2}), ctx, 3)
        ((parents, n_per),) = ctx.source.calls
        assert n_per == 1 and len(parents) == 3 and parents[0] == "t1"
        assert set(parents[1:]) < {"t2", "t3", "t4"}


def test_generator_mode_iid_draws_fresh_iid_problems_not_variants():
    ctx = gen_ctx(TRAIN4)
    sel = run_selection(build_strategy("iid"), ctx, 2)
    assert ctx.source.calls == [] and set(sel.ids) <= {e.id for e in IID_POOL}


def test_parents_fraction_is_checked():
    for name in ("ifd", "long-solution", "random-variants"):
        with pytest.raises(StrategyError, match=r"parameter parents=0\.0 is invalid; it must be in \(0, 1\]"):
            build_strategy(name, {"parents": 0})


# -- a generator never makes a test question ----------------------------------------------------------
def test_generator_source_holds_out_test_questions_and_still_makes_n():
    from curator.data.sources import GeneratorSource
    from curator.data.synthetic import synthetic_task

    src = GeneratorSource(synthetic_task("easy"), pool_size=20, seed=0)
    parent = src.candidates()[0]
    before = src.similar([parent], 4, seed=1)
    held = Example(id="test-0", question=before[1].question, solution="other trace\n#### 0", answer="0")
    src.hold_out([held, Example(id="test-1", question=src.candidates()[3].question, solution="x", answer="0")])
    after = src.similar([parent], 4, seed=1)
    assert len(after) == 4 and held.question not in {e.question for e in after}
    # the same draws otherwise: the held-out one is skipped and the next draw takes its place
    assert [e.id for e in after[:1]] == [before[0].id] and [e.id for e in after[1:3]] == [x.id for x in before[2:4]]
    assert len(src.candidates()) == 19  # the i.i.d. pool drops the held-out question too


# -- budgets as multiples of the seed set ------------------------------------------------------------
def test_budget_multiples_of_the_seed_set():
    r = recipe_from_dict({"loop": {"rounds": 4, "budget": ["2x", "0.5x", 7]}})
    assert [r.loop.budget_for(i, seed_size=16) for i in range(3)] == [32, 8, 7]
    assert recipe_from_dict({"loop": {"budget": "0.5x"}}).loop.budget_for(0, seed_size=5) == 2  # floor, as int()
    assert recipe_from_dict({"loop": {"budget": "0.29x"}}).loop.budget_for(0, seed_size=100) == 29
    assert recipe_from_dict({"loop": {"budget": "0.1x"}}).loop.budget_for(0, seed_size=3) == 1  # at least one
    with pytest.raises(ConfigError, match="pass seed_size"):
        recipe_from_dict({"loop": {"budget": "2x"}}).loop.budget_for(0)


@pytest.mark.parametrize("bad", ["2", "x", "-1x", "twox", 0])
def test_bad_budget_is_one_clear_line(bad):
    with pytest.raises(ConfigError, match="loop.budget"):
        recipe_from_dict({"loop": {"budget": bad}})


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_loop_in_generator_mode_grows_by_a_multiple_with_variants_of_the_seed_set(tmp_path):
    import json

    import pandas as pd

    from curator.run import run_recipe

    recipe = recipe_from_dict(
        {
            "name": "kang-tiny",
            "seed": 3,
            "output_dir": str(tmp_path / "run"),
            "model": {"name": "tiny-random", "lora": None},
            "data": {
                "pool": "synthetic:easy?n=40&seed=1",
                "test": "synthetic:easy?n=4&seed=2",
                "seed_size": 4,
                "grader": "gsm8k",
                "source": "generator",
                "generator_pool_size": 10,
            },
            "training": {"epochs": 1, "learning_rate": 0.003, "batch_size": 4, "max_length": 512},
            "dynamics": {"samples": 2, "max_new_tokens": 8, "batch_size": 16},
            "evaluation": {"max_new_tokens": 8},
            "loop": {"rounds": 2, "budget": "1.5x"},
            "strategies": [{"name": "long-solution"}],
        }
    )
    summary = run_recipe(recipe, progress=False, echo=lambda *a: None)
    run = summary.run_dir / "long-solution"
    seed_ids = set(json.loads((summary.run_dir / "seed_ids.json").read_text()))
    sel = pd.read_parquet(run / "round-00/selection.parquet")
    chosen = sel[sel["selected"]]
    assert len(chosen) == 6  # 1.5 x the seed set of 4
    metrics = json.loads((run / "round-01/metrics.json").read_text())
    assert metrics["n_train"] == 10
    from curator.rounds import RoundStore

    new = RoundStore(run).new_examples(0)
    assert len(new) == 6 and {e.meta["parent_id"] for e in new} <= seed_ids
