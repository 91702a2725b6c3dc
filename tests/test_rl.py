"""The RL selection seam (curator.integrations.rl) and the pass-rate strategies, with planted answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from curator.data.example import Example
from curator.errors import DataError, StrategyError
from curator.integrations.rl import RolloutCurator, rollout_pool
from curator.strategy import SelectionContext, build_strategy, run_selection

# planted recent pass rates over 4 completions each; p5 is issued but never observed
PLANTED = {"p0": [1, 1, 1, 1], "p1": [0, 0, 0, 0], "p2": [1, 0, 1, 0], "p3": [1, 0, 0, 0], "p4": [1, 1, 1, 0]}


def planted(strategy: str, params=None, **kw) -> RolloutCurator:
    c = RolloutCurator(rollout_pool([f"p{i}" for i in range(6)], answers=["7"] * 6), strategy, params, **kw)
    c.select(6)  # issue every prompt once
    ids = [i for i, r in PLANTED.items() for _ in r]
    c.observe(ids, [x for r in PLANTED.values() for x in r], step=0)
    return c


# -- the strategies, planted --------------------------------------------------------------------------
def test_pass_rate_band_takes_the_band_then_unseen_then_the_rest():
    c = planted("pass-rate-band", {"lo": 0.25, "hi": 0.75})
    assert set(c.select(3)) == {"p2", "p3", "p4"}
    assert set(c.select(4)) == {"p2", "p3", "p4", "p5"}
    assert set(c.select(5)) - {"p2", "p3", "p4", "p5"} <= {"p0", "p1"}
    c = planted("pass-rate-band", {"lo": 0.5, "hi": 1.0, "unseen": 0.0})
    assert set(c.select(3)) == {"p0", "p2", "p4"}
    # unseen=0 ranks p5 with the out-of-band p1 and p3: the 4th pick is one of them
    assert len(set(c.select(4)) & {"p1", "p3", "p5"}) == 1


def test_pass_rate_band_scores_exactly():
    c = planted("pass-rate-band", {"lo": 0.25, "hi": 0.5, "unseen": 0.3})
    ctx = SelectionContext(pool=c.pool)
    from curator.integrations.rl import RolloutSignals

    ctx.signals = RolloutSignals(c)
    assert c.strategy.score(ctx).tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.3]


def test_drop_solved_failed_never_takes_all_right_or_all_wrong():
    c = planted("drop-solved-failed")
    assert set(c.select(4)) == {"p2", "p3", "p4", "p5"}
    assert len(set(c.select(5)) & {"p0", "p1"}) == 1


def test_learnability_and_uncertainty_run_unchanged_on_the_rollout_ledger():
    c = planted("learnability", {"n": 4})
    first = c.select(3)
    assert first[0] == "p2" and set(first[1:]) == {"p3", "p4"}  # p(1-p): 0.25, then 0.1875 twice
    c = planted("uncertainty", {"n": 4})
    # answers are the reference (correct) or None: entropy ln 2 for p2, 0.562 for p3/p4, 0 for the rest
    first = c.select(3)
    assert first[0] == "p2" and set(first[1:]) == {"p3", "p4"}


def test_answers_passed_to_observe_are_what_uncertainty_sees():
    c = RolloutCurator(rollout_pool(["a", "b"]), "uncertainty", {"n": 3})
    c.select(2)
    c.observe(["a", "a", "a", "b", "b", "b"], [0, 0, 0, 0, 0, 0], step=0, answers=["1", "2", "3", "4", "4", "4"])
    assert c.select(1) == ["a"]  # three different wrong answers beat three equal ones


def test_pass_rate_strategies_in_the_sft_loop_grade_sampled_answers():
    class Answers:  # the loop's Signals, reduced to what the strategies need
        def answers(self, examples, n=None):
            return [["5", "5", None, "3"], ["5", "5", "5", "5"], ["5", None, None, "2"]][: len(examples)]

    pool = [Example(id=i, question="q", solution="s", answer="5") for i in ("x", "y", "z")]
    ctx = SelectionContext(pool=pool, signals=Answers())
    sel = run_selection(build_strategy("pass-rate-band", {"lo": 0.4, "hi": 0.6, "n": 4, "grader": "gsm8k"}), ctx, 1)
    assert sel.ids == ["x"] and sel.scores == {"x": 1.0, "y": 0.0, "z": 0.0}
    sel = run_selection(build_strategy("drop-solved-failed", {"n": 4, "grader": "gsm8k"}), ctx, 3)
    assert sel.scores == {"x": 1.0, "y": 0.0, "z": 1.0}


def test_strategy_parameters_are_checked():
    with pytest.raises(
        StrategyError, match=r"lo/hi=\(0.9, 0.1\) is invalid; it must be numbers with 0 <= lo <= hi <= 1"
    ):
        build_strategy("pass-rate-band", {"lo": 0.9, "hi": 0.1})


# -- the rollout ledger ---------------------------------------------------------------------------------
def test_rollout_ledger_has_the_schema_with_step_windows_and_no_target():
    c = RolloutCurator(rollout_pool(["a", "b", "c"]), "iid", window=2)
    c.select(3)
    c.observe(["a", "a", "b"], [1.0, 0.0, 0.5], step=0)
    c.observe(["a", "b"], [1.0, 1.0], step=1)  # same window (steps 0-1)
    c.observe(["c", "c"], [0.0, 1.0], step=2)  # window 2
    df = c.ledger().df
    assert c.ledger().meta["kind"] == "rollout"
    got = [(r.example_id, r.checkpoint, r.step, r.n_samples, r.n_correct) for r in df.itertuples()]
    assert got == [
        ("a", 1, 0, 3, 2),
        ("b", 1, 0, 2, 1),
        ("c", 1, 0, 0, 0),
        ("a", 2, 2, 0, 0),
        ("b", 2, 2, 0, 0),
        ("c", 2, 2, 2, 1),
    ]
    assert df["reward_mean"].iloc[:2].tolist() == [2 / 3, 0.75] and math.isnan(df["reward_mean"].iloc[2])
    assert df["skip_reason"].isna().tolist() == [True, True, False, False, False, True]
    assert df["perplexity"].isna().all() and df["target_nll"].isna().all()
    assert c.rollouts == 7 and c.checkpoint == 2
    assert c.ledger().meta["k"] == 3  # the largest group in a window


def test_rollout_ledger_round_trips_through_parquet(tmp_path):
    from curator.dynamics.ledger import read_ledger

    c = RolloutCurator(rollout_pool(["a", "b"]), "iid")
    c.select(2)
    c.observe(["a", "a", "b"], [1.0, 0.0, 0.25], step=0)
    back = read_ledger(c.ledger().to_parquet(tmp_path / "rollouts.parquet"))
    assert back.meta["kind"] == "rollout" and back.df["n_correct"].tolist() == [1, 0]


def test_partial_credit_counts_correct_at_the_threshold():
    c = RolloutCurator(rollout_pool(["a"]), "iid", correct_at=0.5)
    c.select(1)
    c.observe(["a"] * 4, [0.6, 0.4, 0.5, 1.0], step=3)
    assert int(c.ledger().df["n_correct"].iloc[0]) == 3
    c = RolloutCurator(rollout_pool(["a"]), "iid")  # default: full credit only
    c.select(1)
    c.observe(["a"] * 4, [0.6, 0.4, 0.5, 1.0], step=3)
    assert int(c.ledger().df["n_correct"].iloc[0]) == 1


def test_history_forgets_old_outcomes():
    c = RolloutCurator(rollout_pool(["a", "b"]), "drop-solved-failed", history=2)
    c.select(2)
    c.observe(["a", "a"], [1, 1], step=0)  # a: all solved
    c.observe(["b", "b"], [1, 0], step=1)
    assert c.select(1) == ["b"]  # a is dropped while it is recent
    c.observe(["b", "b"], [1, 0], step=2)  # window 3: a's window 1 is now outside history=2
    from curator.integrations.rl import RolloutSignals

    rates = RolloutSignals(c).pass_rates(c.pool)
    assert math.isnan(rates[0]) and rates[1] == 0.5
    assert c.ledger().checkpoints == [2, 3]


# -- state and resumption -----------------------------------------------------------------------------
def rewards_for(ids: list[str], step: int, group: int) -> tuple[list[str], list[float]]:
    """A deterministic environment: prompt i is solved with probability (i % 5) / 4."""
    out_ids, out_r = [], []
    for pid in ids:
        i = int(pid[1:])
        draws = np.random.default_rng([i, step]).random(group)
        out_ids += [pid] * group
        out_r += (draws < (i % 5) / 4).astype(float).tolist()
    return out_ids, out_r


def run_steps(c: RolloutCurator, steps: range, k: int = 4, group: int = 4) -> list[list[str]]:
    drawn = []
    for step in steps:
        ids = c.select(k)
        drawn.append(ids)
        c.observe(*rewards_for(ids, step, group), step=step)
    return drawn


@pytest.mark.parametrize(
    "strategy, params",
    [("learnability", {"n": 4}), ("pass-rate-band", {}), ("drop-solved-failed", {}), ("uncertainty", {}), ("iid", {})],
)
def test_kill_and_resume_draws_identical_prompts(strategy, params):
    pool = rollout_pool([f"p{i}" for i in range(30)], answers=["1"] * 30)
    whole = run_steps(RolloutCurator(pool, strategy, params, seed=3), range(12))
    first = RolloutCurator(pool, strategy, params, seed=3)
    drawn = run_steps(first, range(6))
    saved = json.loads(json.dumps(first.state_dict()))  # what a checkpoint file holds
    del first  # the process is killed
    resumed = RolloutCurator(pool, strategy, params, seed=3)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    drawn += run_steps(resumed, range(6, 12))
    assert drawn == whole
    assert len({tuple(d) for d in whole}) > 1  # the choice moves with the outcomes


def test_replayed_selections_come_back_as_recorded():
    pool = rollout_pool([f"p{i}" for i in range(10)])
    c = RolloutCurator(pool, "drop-solved-failed", seed=1)
    drawn = run_steps(c, range(3), k=3)
    assert [c.select(3, index=i) for i in range(3)] == drawn
    assert c.n_selections == 3
    with pytest.raises(DataError, match="selection 5 asked for, but only 3 were made"):
        c.select(3, index=5)
    with pytest.raises(DataError, match="selection 1 was made with k=3, asked again with k=2"):
        c.select(2, index=1)


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.fixture
def seam() -> RolloutCurator:
    c = RolloutCurator(rollout_pool(["a", "b", "c"]), "learnability")
    c.select(2, index=0)
    return c


@pytest.mark.parametrize(
    "rewards, msg",
    [
        ([1.5, 0.0], r"1 reward\(s\) are NaN, infinite or outside \[0, 1\] \(first: completion 0, reward 1.5\)"),
        ([0.0, float("nan")], r"\(first: completion 1, reward nan\)"),
        ([-0.1, 0.0], r"reward -0.1\)"),
        ([0.0, float("inf")], r"reward inf\)"),
    ],
)
def test_bad_rewards_are_refused_and_nothing_is_recorded(seam, rewards, msg):
    ids = seam.select(2, index=0)
    with pytest.raises(DataError, match=msg):
        seam.observe(ids, rewards, step=0)
    assert seam.rollouts == 0


def test_bad_ids_steps_and_lengths_name_the_problem(seam):
    issued = seam.select(2, index=0)
    never = ({"a", "b", "c"} - set(issued)).pop()
    with pytest.raises(DataError, match=r"prompt id\(s\) not in the pool: 'zz'"):
        seam.observe(["zz"], [1.0], step=0)
    with pytest.raises(DataError, match=rf"never issued \(not in any select\(\) result\): '{never}'"):
        seam.observe([issued[0], never], [1.0, 0.0], step=0)
    with pytest.raises(DataError, match="2 prompt ids but 1 rewards"):
        seam.observe(issued, [1.0], step=0)
    seam.observe(issued, [1.0, 0.0], step=4)
    with pytest.raises(DataError, match="step 3 is earlier than step 4, already observed"):
        seam.observe(issued, [1.0, 0.0], step=3)
    assert seam.rollouts == 2


def test_a_state_dict_from_another_pool_or_strategy_is_refused(seam):
    state = seam.state_dict()
    other_pool = RolloutCurator(rollout_pool(["a", "b", "d"]), "learnability")
    with pytest.raises(DataError, match="state dict is for another prompt pool: pool="):
        other_pool.load_state_dict(state)
    other = RolloutCurator(rollout_pool(["a", "b", "c"]), "pass-rate-band")
    with pytest.raises(DataError, match=r"state dict is for another strategy: strategy=.Learnability\(n=5"):
        other.load_state_dict(state)
    other = RolloutCurator(rollout_pool(["a", "b", "c"]), "learnability", {"n": 4})
    with pytest.raises(DataError, match="another strategy"):
        other.load_state_dict(state)
    other = RolloutCurator(rollout_pool(["a", "b", "c"]), "learnability", seed=9)
    with pytest.raises(DataError, match="another seed: seed=0 there, 9 here"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="not a rollout-curator state dict"):
        other.load_state_dict({"weights": 1})


def test_bad_construction():
    with pytest.raises(DataError, match="duplicate prompt ids: a"):
        RolloutCurator(rollout_pool(["a", "a"]), "iid")
    with pytest.raises(DataError, match=r"correct_at=0 must be a number in \(0, 1\]"):
        RolloutCurator(rollout_pool(["a"]), "iid", correct_at=0)
    with pytest.raises(DataError, match="the prompt pool is empty"):
        RolloutCurator([], "iid")


def test_the_seams_fast_path_chooses_what_strategy_select_would():
    from curator.integrations.rl import RolloutSignals

    for name in ("pass-rate-band", "drop-solved-failed", "learnability", "iid"):
        c = planted(name)
        i = c.n_selections
        ctx = SelectionContext(pool=c.pool, rng=np.random.default_rng([c.seed, i]))
        ctx.signals = RolloutSignals(c)
        assert c.select(4) == c.strategy.select(ctx, 4), name


def test_only_rollout_ledgers_may_lack_a_target():
    from curator.dynamics.ledger import Ledger

    row = dict(
        example_id="a", checkpoint=1, step=0, epoch=0.0, n_samples=2, n_correct=1, target_nll=math.nan, memorized=False
    )
    with pytest.raises(DataError, match="NaN, infinite or < 1 perplexities"):
        Ledger.from_rows([row], p=1.105)
    assert math.isnan(Ledger.from_rows([row], kind="rollout").df["perplexity"].iloc[0])


def test_learnability_reads_the_seams_pass_rates_as_its_answers_path_would():
    from curator.integrations.rl import RolloutSignals

    c = planted("learnability", {"n": 4})
    fast = SelectionContext(pool=c.pool)
    fast.signals = RolloutSignals(c)

    class AnswersOnly:  # the same outcomes without the pass-rate array: the per-prompt grading path
        def answers(self, examples, n=None):
            return fast.signals.answers(examples, n)

    slow = SelectionContext(pool=c.pool)
    slow.signals = AnswersOnly()
    assert c.strategy.score(fast).tolist() == c.strategy.score(slow).tolist() == [0.0, 0.0, 0.25, 0.1875, 0.1875, 0.0]


def test_uncertainty_reads_the_seams_entropies_as_its_answers_path_would():
    from curator.integrations.rl import RolloutSignals

    c = planted("uncertainty", {"n": 4})
    c.observe(["p0", "p0", "p0"], [0, 0, 0], step=c._last_step + 1, answers=["1", "2", "2"])
    fast = SelectionContext(pool=c.pool)
    fast.signals = RolloutSignals(c)

    class AnswersOnly:  # the same outcomes without the entropy array: one answer list per prompt
        def answers(self, examples, n=None):
            return fast.signals.answers(examples, n)

    slow = SelectionContext(pool=c.pool)
    slow.signals = AnswersOnly()
    got, want = c.strategy.score(fast), c.strategy.score(slow)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-15)
    # p0: answers 1, 2, 2 -> -(1/3 ln 1/3 + 2/3 ln 2/3); p2: 2 of 4 right -> ln 2; p3/p4 -> 0.5623
    assert got[0] == pytest.approx(0.6365141682948128) and got[2] == pytest.approx(math.log(2))
    assert got[3] == got[4] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
