"""The strategy contract: shared top-k, build_strategy validation, run_selection's checks."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from curator.data.example import Example
from curator.errors import CuratorError, StrategyError
from curator.signals import Signals
from curator.strategy import BUILTINS, SelectionContext, Strategy, build_strategy, run_selection, strategies, top_k


def pool(n: int, prefix: str = "c") -> list[Example]:
    return [Example(id=f"{prefix}{i}", question=f"q{i}", solution=f"s{i}\n#### {i}", answer=str(i)) for i in range(n)]


class Fixed(Strategy):
    name = "fixed"

    def __init__(self, scores=(0.0,)):
        self.scores = list(scores)

    def score(self, ctx):
        return np.array(self.scores)


class Returns(Strategy):
    """Returns whatever it was told to (for contract violations)."""

    name = "returns"

    def __init__(self, out=()):
        self.out = out

    def select(self, ctx, k):
        return self.out


# -- top_k ---------------------------------------------------------------------------------------
def test_top_k_takes_highest_scores_best_first():
    ids = ["a", "b", "c", "d", "e"]
    assert top_k([0.1, 0.9, 0.5, -3.0, 0.7], 3, ids, np.random.default_rng(0)) == ["b", "e", "c"]
    assert top_k([0.1, 0.9, 0.5, -3.0, 0.7], 9, ids, np.random.default_rng(0)) == ["b", "e", "c", "a", "d"]
    assert top_k([1.0, 2.0], 0, ["a", "b"], np.random.default_rng(0)) == []


def test_top_k_breaks_ties_by_seeded_rng_not_pool_order():
    ids = ["a", "b", "c", "d"]
    scores = [1.0, 5.0, 1.0, 5.0]
    runs = {tuple(top_k(scores, 3, ids, np.random.default_rng(s))) for s in range(30)}
    # the two 5.0s always come first, in both orders across seeds; the third is one of the 1.0s
    assert {r[:2] for r in runs} == {("b", "d"), ("d", "b")}
    assert {r[2] for r in runs} == {"a", "c"}
    for s in range(5):  # same seed, same answer
        assert top_k(scores, 3, ids, np.random.default_rng(s)) == top_k(scores, 3, ids, np.random.default_rng(s))


def test_top_k_refuses_nan_and_misaligned_scores():
    with pytest.raises(StrategyError, match="NaN"):
        top_k([1.0, float("nan")], 1, ["a", "b"], np.random.default_rng(0))
    with pytest.raises(StrategyError, match="3 scores for 2 ids"):
        top_k([1.0, 2.0, 3.0], 1, ["a", "b"], np.random.default_rng(0))


# -- run_selection -------------------------------------------------------------------------------
def test_run_selection_records_every_candidates_score():
    ctx = SelectionContext(pool=pool(4))
    sel = run_selection(Fixed([0.3, 0.1, 0.9, 0.2]), ctx, 2)
    assert sel.ids == ["c2", "c0"]
    assert [e.id for e in sel.examples] == ["c2", "c0"]
    assert sel.scores == {"c0": 0.3, "c1": 0.1, "c2": 0.9, "c3": 0.2}
    assert sel.note == "" and sel.strategy == "fixed"


def test_k_larger_than_pool_takes_what_is_left_and_says_so():
    sel = run_selection(Fixed([0.3, 0.1, 0.9]), SelectionContext(pool=pool(3)), 10)
    assert sel.ids == ["c2", "c0", "c1"]
    assert "asked for 10" in sel.note and "only 3 candidates" in sel.note


def test_bad_k_is_refused():
    for k in (-1, 1.5, "3", True):
        with pytest.raises(StrategyError, match="k must be a non-negative integer"):
            run_selection(Fixed([1.0]), SelectionContext(pool=pool(1)), k)


@pytest.mark.parametrize(
    "out, msg",
    [
        (["c1", "c1"], "'returns' returned duplicate ids: c1"),
        (["c1", "zz"], "'returns' returned 1 ids that are not in the pool: zz"),
        ([0, 1], "must return example ids .str."),
        ("c1", "must return a list of example ids"),
        (None, "must return a list of example ids"),
        (["c0", "c1", "c2"], "returned 3 ids but only k=2"),
    ],
)
def test_contract_violations_name_the_strategy(out, msg):
    with pytest.raises(StrategyError, match=msg):
        run_selection(Returns(out), SelectionContext(pool=pool(3)), 2)


def test_fewer_than_k_with_candidates_left_is_an_error():
    # not a note: the loop would otherwise stop with a false "the pool ran out" (issue 16)
    with pytest.raises(StrategyError, match="'returns' returned 1 ids for k=2 while 3 candidates remain"):
        run_selection(Returns(["c1"]), SelectionContext(pool=pool(3)), 2)


def test_score_of_wrong_shape_is_an_error():
    with pytest.raises(StrategyError, match=r"'fixed': score\(\) returned shape \(2,\)"):
        run_selection(Fixed([1.0, 2.0]), SelectionContext(pool=pool(3)), 1)


def test_undeclared_signal_is_refused():
    class Sneaky(Strategy):
        name = "sneaky"
        needs = frozenset({"embeddings"})

        def score(self, ctx):
            return ctx.signals.losses(ctx.pool)

    sig = Signals()
    sig.put("losses", ["c0", "c1"], [1.0, 2.0])
    with pytest.raises(StrategyError, match="'sneaky' asked for losses but does not declare 'losses'"):
        run_selection(Sneaky(), SelectionContext(pool=pool(2), signals=sig), 1)


def test_generate_similar_adds_new_examples_to_the_pool():
    class Gen:
        generative = True

        def similar(self, examples, n_per, seed):
            return [
                Example(id=f"{e.id}-{j}", question="q", solution="s", answer="1", meta={"parent_id": e.id})
                for e in examples
                for j in range(n_per)
            ] + [examples[0]]  # a repeat is dropped

    ctx = SelectionContext(pool=pool(1), train=pool(2, "t"), source=Gen())
    new = ctx.generate_similar(ctx.train, 2)
    assert [e.id for e in new] == ["t0-0", "t0-1", "t1-0", "t1-1"]
    assert [e.id for e in ctx.pool] == ["c0", "t0-0", "t0-1", "t1-0", "t1-1"]
    with pytest.raises(StrategyError, match="cannot generate"):
        SelectionContext(pool=pool(1)).generate_similar(pool(1), 1)


# -- build_strategy ------------------------------------------------------------------------------
def test_builtins_are_lazy_targets_and_all_resolve():
    assert set(BUILTINS) <= set(strategies.names())
    for name in BUILTINS:
        s = build_strategy(name)
        assert s.name == name and isinstance(s, Strategy)


def test_unknown_name_suggests_closest_and_lists_the_rest():
    with pytest.raises(StrategyError) as e:
        build_strategy("premem-treshold")
    msg = str(e.value)
    assert "Did you mean 'premem-threshold'?" in msg
    for name in BUILTINS:
        assert name in msg


def test_unknown_parameter_names_strategy_and_lists_parameters():
    with pytest.raises(StrategyError) as e:
        build_strategy("premem-threshold", {"treshold": 0.3})
    assert str(e.value) == (
        "strategy 'premem-threshold' has no parameter 'treshold' (did you mean 'threshold'?). "
        "Its parameters: threshold=0.75, fallback_fraction=0.1"
    )
    with pytest.raises(StrategyError, match="'iid' has no parameter 'n'. Its parameters: .none."):
        build_strategy("iid", {"n": 3})
    with pytest.raises(StrategyError, match="did you mean 'eps'"):
        build_strategy("embedding-diversity", {"esp": 0.1})


def test_bad_parameter_value_is_explained():
    with pytest.raises(
        StrategyError, match=r"'premem-threshold': parameter threshold=1.5 is invalid; it must be in \(0, 1\]"
    ):
        build_strategy("premem-threshold", {"threshold": 1.5})
    assert build_strategy("uncertainty", {"n": 7}).n == 7


@pytest.mark.parametrize(
    "path, msg",
    [
        ("no_such_pkg.mod:Thing", "cannot import module 'no_such_pkg.mod'"),
        ("curator.strategy:NoSuchClass", "has no attribute 'NoSuchClass'"),
        ("math:pi", "not a class"),
        ("collections:OrderedDict", "has no select"),
        ("curator.strategy:Strategy", "implements neither score"),
    ],
)
def test_bad_module_class_paths(path, msg):
    with pytest.raises(StrategyError, match=msg):
        build_strategy(path)


def test_module_class_path_and_contract_of_needs(tmp_path, monkeypatch):
    (tmp_path / "my_strats.py").write_text(
        "import numpy as np\n"
        "from curator.strategy import Strategy\n"
        "class Shortest(Strategy):\n"
        "    needs = frozenset()\n"
        "    def __init__(self, flip: bool = False):\n"
        "        self.flip = flip\n"
        "    def score(self, ctx):\n"
        "        s = -np.array([len(e.question) for e in ctx.pool], float)\n"
        "        return -s if self.flip else s\n"
        "class BadNeeds(Strategy):\n"
        "    needs = frozenset({'gradients'})\n"
        "    def score(self, ctx):\n"
        "        return np.zeros(len(ctx.pool))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    s = build_strategy("my_strats:Shortest", {"flip": True})
    assert s.name == "my_strats:Shortest"
    p = [Example(id=i, question=q, solution="s", answer="1") for i, q in [("a", "xx"), ("b", "xxxx"), ("c", "x")]]
    assert run_selection(s, SelectionContext(pool=p), 2).ids == ["b", "a"]
    with pytest.raises(StrategyError, match="needs must be a frozenset drawn from"):
        build_strategy("my_strats:BadNeeds")
    with pytest.raises(StrategyError, match="has no parameter 'x'"):
        build_strategy("my_strats:Shortest", {"x": 1})


def test_strategy_error_is_a_curator_error():
    assert issubclass(StrategyError, CuratorError)


# -- CLI -----------------------------------------------------------------------------------------
def test_curate_strategies_lists_every_builtin_with_needs_and_parameters():
    from curator.cli.strategies import strategies as cmd

    out = CliRunner().invoke(cmd, []).output
    for name in BUILTINS:
        assert f"{name}  —  " in out
    assert "parameters: threshold=0.75, fallback_fraction=0.1" in out
    assert "needs:      embeddings, ledger" in out
    assert "needs:      (nothing)" in out  # iid


def test_curate_strategies_json():
    import json

    from curator.cli.strategies import strategies as cmd

    rows = json.loads(CliRunner().invoke(cmd, ["--json"]).output)
    by = {r["name"]: r for r in rows}
    assert by["uncertainty"]["needs"] == ["answers"] and by["uncertainty"]["parameters"] == {"n": "5"}
