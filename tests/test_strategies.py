"""Built-in strategies: each one picks the planted answer, deterministically for a seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from launching import VariantSource

from curator.data.example import Example
from curator.dynamics.ledger import Ledger
from curator.signals import Signals
from curator.strategy import SelectionContext, build_strategy, run_selection
from strategies.diversity import kcenter_greedy
from strategies.premem import nearest_round_robin
from strategies.uncertainty import answer_entropy

D = 8


def ex(i: str, question: str = "", meta=None) -> Example:
    return Example(
        id=i,
        question=question or f"question {i}",
        solution=f"step {i}\n#### {len(i)}",
        answer=str(len(i)),
        meta=meta or {},
    )


def e(*pairs) -> np.ndarray:
    """A vector from (axis, value) pairs."""
    v = np.zeros(D, np.float32)
    for axis, val in pairs:
        v[axis] += val
    return v


def ledger_for(ids, final_correct, k=5) -> Ledger:
    # two checkpoints, perplexity never at or below p: PreMemAcc = final accuracy
    nc = np.array([[0, c] for c in final_correct])
    return Ledger.from_arrays(ids, nc, k=k, perplexity=np.full(nc.shape, 3.0), p=1.105)


def ctx_with(pool, train, vecs: dict, ledger=None, seed=0, source=None) -> SelectionContext:
    sig = Signals()
    sig.put("embeddings", list(vecs), np.stack(list(vecs.values())))
    return SelectionContext(
        pool=list(pool), train=list(train), ledger=ledger, signals=sig, rng=np.random.default_rng(seed), source=source
    )


TRAIN = [ex(f"t{i}") for i in range(4)]
TRAIN_VECS = {f"t{i}": e((i, 1.0)) for i in range(4)}


# -- iid -----------------------------------------------------------------------------------------
def test_iid_is_a_seeded_uniform_sample():
    pool = [ex(f"c{i}") for i in range(50)]
    a = run_selection(build_strategy("iid"), SelectionContext(pool=list(pool), rng=np.random.default_rng(3)), 10)
    b = run_selection(build_strategy("iid"), SelectionContext(pool=list(pool), rng=np.random.default_rng(3)), 10)
    c = run_selection(build_strategy("iid"), SelectionContext(pool=list(pool), rng=np.random.default_rng(4)), 10)
    assert a.ids == b.ids and a.ids != c.ids and len(set(a.ids)) == 10
    assert len(a.scores) == 50
    # uniform: over many seeds every candidate is picked about k/n = 20% of the time
    counts = np.zeros(50)
    for s in range(400):
        for i in run_selection(
            build_strategy("iid"), SelectionContext(pool=list(pool), rng=np.random.default_rng(s)), 10
        ).ids:
            counts[int(i[1:])] += 1
    assert counts.min() > 40 and counts.max() < 125  # expected 80 each; binomial sd 8


# -- loss ----------------------------------------------------------------------------------------
class FakeSampler:
    """target_logprobs from a table keyed by target text; generate from a table keyed by prompt."""

    def __init__(self, logprobs=None, completions=None):
        self.logprobs, self.completions = logprobs or {}, completions or {}
        self.scored: list[str] = []
        self.generated: list[str] = []

    def target_logprobs(self, prompts, targets):
        self.scored.extend(targets)
        return [np.array(self.logprobs[t]) for t in targets]

    def generate(self, prompts, n, params):
        self.generated.extend(prompts)
        return [self.completions[p][:n] for p in prompts]


def test_loss_picks_the_one_high_loss_candidate():
    pool = [ex(f"c{i}") for i in range(6)]
    from curator.data.format import PromptFormat

    fmt = PromptFormat()
    lps = {fmt.target_text(c): [-0.1, -0.3] for c in pool}
    lps[fmt.target_text(pool[4])] = [-3.0, -5.0]  # the planted hardest candidate
    lps[fmt.target_text(pool[2])] = [-1.0, -2.0]
    sig = Signals(sampler=FakeSampler(lps), key="round-0")
    sel = run_selection(build_strategy("loss"), SelectionContext(pool=pool, signals=sig), 2)
    assert sel.ids == ["c4", "c2"]
    assert sel.scores["c4"] == pytest.approx(4.0) and sel.scores["c2"] == pytest.approx(1.5)
    assert sel.scores["c0"] == pytest.approx(0.2) and len(sel.scores) == 6


# -- embedding-diversity -------------------------------------------------------------------------
def clusters_world():
    rng = np.random.default_rng(0)
    pool, vecs = [], dict(TRAIN_VECS)
    for c, axis in (("A", 0), ("B", 1), ("C", 2)):
        for j in range(5):
            i = f"{c}{j}"
            pool.append(ex(i))
            vecs[i] = e((axis, 1.0)) + rng.normal(0, 0.02, D).astype(np.float32)
    return pool, vecs


def test_diversity_picks_the_one_uncovered_cluster_first():
    pool, vecs = clusters_world()
    train = [t for t in TRAIN if t.id in ("t0", "t1")]  # covers clusters A and B only
    for eps in (0.0, 0.05):
        sel = run_selection(build_strategy("embedding-diversity", {"eps": eps}), ctx_with(pool, train, vecs), 1)
        assert sel.ids[0].startswith("C")
        assert len(sel.scores) == 15
        # the pick's score is its distance to the covered set: ~ |e2 - e0| = sqrt(2)
        assert sel.scores[sel.ids[0]] == pytest.approx(math.sqrt(2), abs=0.1)
    # without the training set as covered centers, A and B are uncovered too: 3 picks, 3 clusters
    sel = run_selection(
        build_strategy("embedding-diversity", {"eps": 0.0, "cover_train": False}), ctx_with(pool, train, vecs), 3
    )
    assert sorted(i[0] for i in sel.ids) == ["A", "B", "C"]


def naive_kcenter(X, k, C):
    d = ((X[:, None, :] - C[None]) ** 2).sum(-1).min(1)
    picks = []
    for _ in range(k):
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, ((X - X[i]) ** 2).sum(1))
        d[i] = -1
    return picks


@pytest.mark.parametrize("front", [16, 4096])
def test_kcenter_with_eps_zero_equals_exact_greedy(front):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    C = rng.normal(size=(10, 16)).astype(np.float32)
    picks, scores = kcenter_greedy(X, 150, C, eps=0.0, front=front)
    assert picks.tolist() == naive_kcenter(X, 150, C)
    # a non-picked row's score bounds its true distance to the final covered set from above
    cov = np.concatenate([C, X[picks]])
    true = np.sqrt(((X[:, None, :] - cov[None]) ** 2).sum(-1).min(1))
    rest = np.setdiff1d(np.arange(2000), picks)
    assert (scores[rest] >= true[rest] - 1e-4).all()


def test_kcenter_eps_picks_are_within_slack_of_the_farthest():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 8)).astype(np.float32)
    picks, scores = kcenter_greedy(X, 100, X[:1] + 5, eps=0.1, front=32)
    for n in range(1, 100):  # pick n was at least 0.9x as far as the farthest remaining point
        cov = np.concatenate([X[:1] + 5, X[picks[:n]]])
        d = np.sqrt(((X[:, None, :] - cov[None]) ** 2).sum(-1).min(1))
        assert scores[picks[n]] >= 0.9 * d.max() - 1e-4


def test_kcenter_takes_everything_when_k_exceeds_pool_and_starts_seeded_without_centers():
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    picks, _ = kcenter_greedy(X, 50, None, rng=np.random.default_rng(5))
    assert sorted(picks.tolist()) == list(range(20))
    again, _ = kcenter_greedy(X, 50, None, rng=np.random.default_rng(5))
    assert picks.tolist() == again.tolist()


# -- premem-threshold ----------------------------------------------------------------------------
def premem_world():
    """t2 is the only training example with low PreMemAcc; three candidates sit next to it."""
    pool = [ex(i) for i in ("n1", "n2", "n3", "a0", "a1", "a3", "far")]
    vecs = dict(TRAIN_VECS)
    vecs.update(
        n1=e((2, 1), (5, 0.1)),
        n2=e((2, 1), (6, 0.2)),
        n3=e((2, 1), (7, 0.15)),
        a0=e((0, 1), (5, 0.05)),
        a1=e((1, 1), (5, 0.05)),
        a3=e((3, 1), (5, 0.05)),
        far=e((4, 1)),
    )
    ledger = ledger_for([t.id for t in TRAIN], [5, 4, 0, 5])  # PreMemAcc 1, 0.8, 0, 1: only t2 < 0.75
    return pool, vecs, ledger


def test_premem_threshold_picks_the_neighbours_of_the_low_premem_example():
    pool, vecs, ledger = premem_world()
    sel = run_selection(build_strategy("premem-threshold"), ctx_with(pool, TRAIN, vecs, ledger), 3)
    assert sel.ids == ["n1", "n3", "n2"]  # nearest first
    assert sel.note == ""
    # score = cosine similarity to the nearest target example
    assert sel.scores["n1"] == pytest.approx(1 / math.sqrt(1.01), abs=1e-6)
    assert sel.scores["far"] == pytest.approx(0.0, abs=1e-6) and len(sel.scores) == len(pool)


def test_premem_threshold_spreads_over_targets_round_robin():
    # t1 (PreMemAcc 0) has five close neighbours, t2 (0.2) two farther ones: the budget of 4 is
    # shared 2/2 rather than piled on t1
    pool = [ex(i) for i in ("p1", "p2", "p3", "p4", "p5", "q1", "q2")]
    vecs = dict(TRAIN_VECS)
    for j in range(5):
        vecs[f"p{j + 1}"] = e((1, 1), (4 + j % 4, 0.01 * (j + 1)))
    vecs.update(q1=e((2, 1), (5, 0.3)), q2=e((2, 1), (6, 0.4)))
    ledger = ledger_for([t.id for t in TRAIN], [5, 0, 1, 5])
    sel = run_selection(build_strategy("premem-threshold"), ctx_with(pool, TRAIN, vecs, ledger), 4)
    assert sel.ids == ["p1", "q1", "p2", "q2"]


def test_round_robin_looks_further_when_neighbour_lists_overlap():
    X = np.eye(6, dtype=np.float32)
    T = np.stack([X[0] + 0.1 * X[1], X[0] + 0.1 * X[2]])  # both targets' nearest is row 0
    rows, best = nearest_round_robin(X, T, 5)
    assert rows[0] == 0 and len(set(rows.tolist())) == 5


def test_scan_targets_equals_brute_force_across_chunks():
    from strategies.premem import scan_targets

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 16)).astype(np.float32)
    X[100] = X[7]  # an exact tie: the lower row comes first
    T = rng.normal(size=(7, 16)).astype(np.float32)
    T[0] = X[7]
    best, idx = scan_targets(X, T, 20, chunk=512)
    S = T @ X.T
    np.testing.assert_allclose(best, S.max(0), rtol=1e-5)
    for t in range(7):
        want = np.lexsort((np.arange(5000), -S[t]))[:20]
        assert idx[t].tolist() == want.tolist()
    assert idx[0, :2].tolist() == [7, 100]
    _, small = scan_targets(X[:3], T, 5)  # fewer rows than q
    assert small.shape == (7, 3)


def test_premem_threshold_falls_back_to_lowest_and_says_so():
    pool, vecs, _ = premem_world()
    ledger = ledger_for([t.id for t in TRAIN], [5, 5, 4, 5])  # lowest PreMemAcc 0.8 >= 0.75
    sel = run_selection(build_strategy("premem-threshold"), ctx_with(pool, TRAIN, vecs, ledger), 2)
    assert sel.ids == ["n1", "n3"]  # near t2, the lowest
    assert "no training example has PreMemAcc < threshold=0.75" in sel.note and "lowest" in sel.note


def test_premem_threshold_needs_a_ledger():
    pool, vecs, _ = premem_world()
    from curator.errors import StrategyError

    with pytest.raises(StrategyError, match="need the last round's ledger"):
        run_selection(build_strategy("premem-threshold"), ctx_with(pool, TRAIN, vecs, None), 2)


def test_premem_threshold_with_a_generator_draws_similar_examples_evenly():
    pool, vecs, _ = premem_world()
    ledger = ledger_for([t.id for t in TRAIN], [5, 1, 0, 5])  # targets t2 (0.0), then t1 (0.2)
    src = VariantSource("s")
    ctx = ctx_with(pool, TRAIN, vecs, ledger, source=src)
    sel = run_selection(build_strategy("premem-threshold"), ctx, 5)
    assert src.calls == [(["t2", "t1"], 3)]
    assert sel.ids == ["t2-s0", "t1-s0", "t2-s1", "t1-s1", "t2-s2"]
    assert sel.scores["t2-s0"] == 1.0 and sel.scores["t1-s0"] == pytest.approx(0.8)
    assert [x.question for x in sel.examples][:2] == ["like t2 #0", "like t1 #0"]


# -- uncertainty ---------------------------------------------------------------------------------
def test_answer_entropy_hand_computed():
    assert answer_entropy(["1", "1", "1"]) == 0.0
    assert answer_entropy(["1", "2", "1", "2"]) == pytest.approx(math.log(2))
    assert answer_entropy(["1", None, "2", None]) == pytest.approx(1.5 * math.log(2))  # p = 1/4, 1/2, 1/4
    assert answer_entropy(["1", "2", "3", "4"]) == pytest.approx(math.log(4))


def test_uncertainty_picks_the_candidate_with_most_answer_disagreement():
    from curator.data.format import PromptFormat

    fmt = PromptFormat()
    pool = [ex(f"c{i}") for i in range(5)]
    comp = {fmt.prompt_text(c): ["so #### 7"] * 4 for c in pool}
    comp[fmt.prompt_text(pool[3])] = ["#### 1", "#### 2", "#### 3", "#### 4"]  # planted
    comp[fmt.prompt_text(pool[1])] = ["#### 1", "#### 1", "#### 2", "#### 2"]

    class Grader:
        def extract(self, completion):
            return completion.split("####")[-1].strip() if "####" in completion else None

    sig = Signals(sampler=FakeSampler(completions=comp), grader=Grader(), key="r0")
    sel = run_selection(build_strategy("uncertainty", {"n": 4}), SelectionContext(pool=pool, signals=sig), 2)
    assert sel.ids == ["c3", "c1"]
    assert sel.scores["c3"] == pytest.approx(math.log(4)) and sel.scores["c0"] == 0.0


# -- premem-diverse ------------------------------------------------------------------------------
def test_premem_diverse_spreads_inside_the_target_region():
    pool = [ex(i) for i in ("s1a", "s1b", "s1c", "s2", "x0", "x1")]
    vecs = dict(TRAIN_VECS)
    vecs.update(
        s1a=e((2, 1), (5, 0.10)),
        s1b=e((2, 1), (5, 0.10), (6, 0.01)),
        s1c=e((2, 1), (5, 0.10), (7, 0.01)),
        s2=e((2, 1), (6, 0.3)),
        x0=e((0, 1), (5, 0.05)),
        x1=e((1, 1), (5, 0.05)),
    )
    ledger = ledger_for([t.id for t in TRAIN], [5, 5, 0, 5])
    plain = run_selection(build_strategy("premem-threshold"), ctx_with(pool, TRAIN, vecs, ledger), 2)
    assert set(plain.ids) <= {"s1a", "s1b", "s1c"}  # the two nearest: one tight sub-cluster
    div = run_selection(build_strategy("premem-diverse", {"eps": 0.0}), ctx_with(pool, TRAIN, vecs, ledger), 2)
    assert div.ids[0] == "s2" and div.ids[1] in {"s1a", "s1b", "s1c"}
    assert len(div.scores) == 6


def test_premem_diverse_region_excludes_far_candidates():
    pool = [ex(i) for i in ("near", "far")]
    vecs = dict(TRAIN_VECS)
    vecs.update(near=e((2, 1), (5, 0.2)), far=e((4, 1)))
    ledger = ledger_for([t.id for t in TRAIN], [5, 5, 0, 5])
    sel = run_selection(build_strategy("premem-diverse", {"region_factor": 1}), ctx_with(pool, TRAIN, vecs, ledger), 1)
    # k-center alone would take `far` (farthest from training); the region keeps it out
    assert sel.ids == ["near"] and sel.scores["far"] == -math.inf


# -- determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["iid", "embedding-diversity", "premem-threshold", "premem-diverse"])
def test_same_seed_same_selection(name):
    rng = np.random.default_rng(7)
    pool = [ex(f"c{i}") for i in range(300)]
    vecs = dict(TRAIN_VECS)
    for c in pool:
        vecs[c.id] = rng.normal(size=D).astype(np.float32)
    ledger = ledger_for([t.id for t in TRAIN], [5, 0, 0, 5])  # two targets, tied PreMemAcc
    runs = [
        run_selection(build_strategy(name), ctx_with(pool, TRAIN, vecs, ledger, seed=s), 20).ids for s in (11, 11, 12)
    ]
    assert runs[0] == runs[1] and len(set(runs[0])) == 20
    if name == "iid":
        assert runs[0] != runs[2]


# -- the real stack: tiny model, HF sampler, grader, synthetic generator ---------------------------
@pytest.mark.slow
def test_every_builtin_runs_on_real_signals_and_a_generator_source():
    from curator.data.grading import get_grader
    from curator.data.sources import GeneratorSource
    from curator.data.synthetic import SyntheticTask
    from curator.models.tiny import tiny_model, tiny_tokenizer
    from curator.sampling.base import SamplingParams
    from curator.sampling.hf import HFSampler
    from curator.signals import SignalCache

    tok = tiny_tokenizer()
    model = tiny_model(seed=0, tokenizer=tok)
    source = GeneratorSource(SyntheticTask(), pool_size=12, seed=0)
    pool = source.candidates()
    train = SyntheticTask().generate(4, seed=99)
    ledger = ledger_for([t.id for t in train], [5, 0, 5, 5])  # train[1] is the low one
    cache = SignalCache()  # shared by all strategies, as in one comparison
    sampler = HFSampler(model, tok)
    params = SamplingParams(max_new_tokens=8, seed=0)
    sigs = []
    for name in ["iid", "loss", "embedding-diversity", "uncertainty", "premem-threshold", "premem-diverse"]:
        sig = Signals(model, tok, sampler, get_grader("gsm8k"), sampling=params, n_answers=2, cache=cache)
        sigs.append(sig)
        ctx = SelectionContext(
            pool=list(pool), train=train, ledger=ledger, signals=sig, rng=np.random.default_rng(0), source=source
        )
        sel = run_selection(build_strategy(name, {"n": 2} if name == "uncertainty" else {}), ctx, 3)
        assert len(sel.ids) == 3 and len(set(sel.ids)) == 3, name
        assert all(i in sel.scores for i in sel.ids), name
        if name.startswith("premem"):
            # generated anew, similar to the one low-PreMemAcc example
            assert all(x.meta.get("parent_id") == train[1].id for x in sel.examples), name
        elif name in ("loss", "uncertainty"):
            # generator mode: variants of the top-scored 3/4 of the training set (strategies/variants.py)
            assert not set(sel.ids) & {p.id for p in pool}, name
            assert all(x.meta.get("parent_id") in {t.id for t in train} for x in sel.examples), name
        else:
            assert set(sel.ids) <= {p.id for p in pool}, name
    # the pool was embedded once (embedding-diversity); premem-diverse embedded only new examples
    total = {k: sum(s.stats["embeddings"][k] for s in sigs) for k in ("computed", "cached")}
    assert total["computed"] == len(pool) + len(train) + 12  # 12 = region_factor 4 x k 3 generated
