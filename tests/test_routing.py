"""MoE routing monitors: edit distance, pathways, consistency, memorization rule, router capture."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest

from curator.dynamics import routing as R
from curator.dynamics.routing import (
    PathwaySet,
    RoutingError,
    RoutingSettings,
    consistency_ci,
    levenshtein,
    memorization_checkpoint,
    pathway_consistency,
    pathway_distance,
    pathway_symbols,
    pathways,
)

# ------------------------------------------------------------------ edit distance


def test_levenshtein_textbook_cases():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("abc", "abc") == 0


def test_pathway_distance_hand_computed():
    # layer-tagged symbols: "0|1" and "1|0" share no symbol (expert 0 of layer 0 != expert 0 of layer 1)
    a, b, c = "0,1|2", "0|2", "1|0"
    ps = PathwaySet.from_paths([a, b, c])
    d = ps.distances([0, 0, 1], [1, 2, 2])
    # a->b: delete expert 1 of layer 0 (1); a->c: [L0e0, L0e1, L1e2] vs [L0e1, L1e0]: delete L0e0,
    # substitute L1e2 -> L1e0 (2); b->c: two substitutions (2)
    assert d.tolist() == [1, 2, 2]
    est = pathway_distance([a, b, c])
    assert est.exact and est.n_pairs == 3 and est.se == 0
    assert est.mean == pytest.approx(5 / 3)


def _random_paths(rng, n, max_layers=6, experts=6, max_k=4):
    return [
        [
            sorted(rng.choice(experts, rng.integers(1, max_k), replace=False).tolist())
            for _ in range(rng.integers(1, max_layers))
        ]
        for _ in range(n)
    ]


def test_batched_distances_match_the_textbook_dp():
    rng = np.random.default_rng(0)
    paths = _random_paths(rng, 40)
    ps = PathwaySet.from_paths(paths)
    i, j = np.triu_indices(40, 1)
    want = [levenshtein(pathway_symbols(paths[a]).tolist(), pathway_symbols(paths[b]).tolist()) for a, b in zip(i, j)]
    assert ps.distances(i, j).tolist() == want  # bit-parallel (<= 64 symbols)
    assert ps.distances(i, j, max_table_bytes=0).tolist() == want  # the vectorised DP fallback
    assert ps.distances(j, i).tolist() == want  # symmetric


def test_pathways_longer_than_one_word_stay_exact():
    rng = np.random.default_rng(1)
    paths = _random_paths(rng, 10, max_layers=50, experts=8, max_k=5)
    paths[0] = [[0, 1, 2, 3]] * 40  # 160 symbols: three 64-bit words
    paths[1] = [[0, 1, 2, 3]] * 17 + [[4]]  # 69: one symbol past the first word
    ps = PathwaySet.from_paths(paths)
    assert ps.codes.shape[1] > 128
    i, j = np.triu_indices(10, 1)
    want = [levenshtein(pathway_symbols(paths[a]).tolist(), pathway_symbols(paths[b]).tolist()) for a, b in zip(i, j)]
    assert ps.distances(i, j).tolist() == want  # blocked bit-parallel kernel
    assert ps.distances(i, j, max_table_bytes=0).tolist() == want  # the DP, when the bit table is too big


def test_sampled_distance_reports_a_standard_error_that_covers_the_exact_mean():
    rng = np.random.default_rng(2)
    paths = _random_paths(rng, 120)
    exact = pathway_distance(paths, max_pairs=10_000)
    assert exact.exact and exact.n_pairs == 120 * 119 // 2
    est = pathway_distance(paths, max_pairs=3000, seed=5)
    assert not est.exact and est.n_pairs == 3000 and est.se > 0
    assert abs(est.mean - exact.mean) < 4 * est.se


def test_per_sample_distance_averages_over_the_others():
    d = R.per_sample_distance(["0|1", "0|2", "3|1"])
    # pairs: (0,1)=1, (0,2)=1, (1,2)=2
    assert d.tolist() == [1.0, 1.5, 1.5]
    assert R.per_sample_distance(["0|1", "0|2", "3|1"], reference=[0]).tolist() == [np.nan, 1.0, 1.0] or np.isnan(
        R.per_sample_distance(["0|1", "0|2", "3|1"], reference=[0])[0]
    )


# ------------------------------------------------------------------ pathways


def test_pathways_keep_experts_up_to_the_cutoff():
    w = np.array([[[0.5, 0.3, 0.2, 0.0]], [[0.2, 0.5, 0.0, 0.3]]])
    assert [p[0].tolist() for p in pathways(w, 0.8)] == [[0, 1], [1, 3]]  # ascending ids
    assert [p[0].tolist() for p in pathways(w, 0.5)] == [[0], [1]]
    assert [p[0].tolist() for p in pathways(w, 1.0)] == [[0, 1, 2], [0, 1, 3]]  # weight-0 experts never kept
    assert R.format_pathway([[0, 3], [1]]) == "0,3|1"
    assert R.parse_pathway("0,3|1") == [[0, 3], [1]]


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, "0.8"])
def test_cutoff_outside_unit_interval_is_refused(bad):
    with pytest.raises(RoutingError, match=r"cutoff must be in \(0, 1\]"):
        pathways(np.ones((1, 1, 2)) / 2, bad)
    with pytest.raises(RoutingError):
        RoutingSettings(cutoff=bad)


# ------------------------------------------------------------------ consistency


def test_consistency_hand_computed():
    # one expert per layer carries all the weight, so e_l is that expert's embedding
    emb = np.zeros((3, 2, 2))
    emb[0, 0] = [1, 0]
    emb[1, 0] = [1, 0]
    emb[2, 0] = [0, 1]
    w = np.zeros((1, 3, 2))
    w[0, :, 0] = 1
    # cos(l0, l1) = 1, cos(l1, l2) = 0: C = 1 - 0.5 / (1 + 1e-8)
    assert consistency_ci(w, emb)[0] == pytest.approx(1 - 0.5 / (1 + 1e-8), abs=1e-12)
    assert pathway_consistency(w, emb)[0] == pytest.approx(0.5, abs=1e-7)
    # every consecutive pair at 45 degrees: mean = max, C = 0 (perfectly consistent)
    emb[1, 0] = [1, 1]
    assert consistency_ci(w, emb)[0] == pytest.approx(0.0, abs=1e-7)
    # routing weights mix the embeddings: layer 1 half expert 0 ([1, 0]) half expert 1 ([0, 1])
    emb2 = np.array([[[1, 0], [0, 1]]] * 3, dtype=float)
    w2 = np.array([[[1, 0], [0.5, 0.5], [1, 0]]])
    c = math.cos(math.pi / 4)
    assert consistency_ci(w2, emb2)[0] == pytest.approx(1 - c / (c + 1e-8), abs=1e-12)


def test_consistency_needs_two_layers():
    with pytest.raises(Exception, match="at least 2 MoE layers"):
        consistency_ci(np.ones((1, 1, 2)) / 2, np.ones((1, 2, 3)))


# ------------------------------------------------------------------ memorization rule


def test_memorization_rule_hand_computed():
    loss = np.array(
        [
            [3.0, 0.40, 0.45, 0.42],  # <= 0.5 and within 0.1 of 0.42 from checkpoint 2 on
            [3.0, 0.40, 0.90, 0.42],  # leaves the band at 3: memorized only from 4
            [3.0, 2.00, 1.00, 0.60],  # final loss above epsilon: never
            [0.1, 0.30, 0.10, 0.10],  # 0.3 is 0.2 from the final 0.1: from 3
            [0.1, np.nan, 0.1, 0.1],  # a NaN breaks the run: from 3
        ]
    )
    assert memorization_checkpoint(loss, epsilon=0.5, delta=0.1).tolist() == [2, 4, 0, 3, 3]
    # a wider band admits checkpoint 1 of row 4; row 2 still fails epsilon at checkpoint 3
    assert memorization_checkpoint(loss, epsilon=0.5, delta=0.5).tolist() == [2, 4, 0, 1, 3]
    with pytest.raises(RoutingError):
        memorization_checkpoint(loss, epsilon=0, delta=0.1)


# ------------------------------------------------------------------ models


@pytest.fixture(scope="module")
def tok():
    from curator.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.mark.parametrize("layout", ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe"])
def test_router_capture_matches_the_models_own_router_logits(layout, tok):
    import torch

    from curator.models.moe import tiny_moe

    model = tiny_moe(layout, seed=1, tokenizer=tok, experts=4, top_k=2)
    seqs = [tok("12 + 7 = 19")["input_ids"], tok("ab")["input_ids"], tok("hello there, world")["input_ids"]]
    w = R.sample_routing(model, seqs, batch_size=2)
    assert w.shape == (3, 2, 4)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    routers = [m for _, m in R.router_modules(model)]
    assert all(not m._forward_hooks for m in routers)  # no hook left after capture
    # reference: each sequence alone through the model's output_router_logits path
    for n, s in enumerate(seqs):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([s]), output_router_logits=True)
        for layer, logits in enumerate(out.router_logits):
            probs = torch.softmax(logits.float(), -1)
            top, idx = torch.topk(probs, 2, -1)
            dist = torch.zeros_like(probs).scatter_(1, idx, top / top.sum(-1, keepdim=True))
            np.testing.assert_allclose(w[n, layer], dist.mean(0).numpy(), atol=1e-5)


def test_routing_on_a_dense_model_lists_supported_layouts(tok):
    from curator.models.tiny import tiny_model

    with pytest.raises(RoutingError) as e:
        R.sample_routing(tiny_model(tokenizer=tok), [[1, 2, 3]])
    msg = str(e.value)
    assert "dense" in msg and "\n" not in msg
    assert all(t in msg for t in ("olmoe", "mixtral", "qwen2_moe"))


def test_unsupported_moe_layout_is_named():
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="deepseek_v3", n_routed_experts=8))
    with pytest.raises(RoutingError, match="not supported for the MoE layout .*deepseek_v3.*supported layouts: olmoe"):
        R.routing_layout(fake)


# ------------------------------------------------------------------ monitor, ledger, metrics


def _examples(n):
    from curator.data.synthetic import synthetic_task

    return synthetic_task("easy").generate(n, seed=3)


def test_monitor_columns_attach_to_a_ledger_and_give_metrics(tok):
    from curator.dynamics.ledger import Ledger, read_ledger
    from curator.models.moe import tiny_moe

    ex = _examples(4)
    model = tiny_moe("mixtral", seed=2, tokenizer=tok, layers=3)
    mon = R.RoutingMonitor(ex, tok, cutoff=0.8)
    mon.record(model, 1)
    torch = pytest.importorskip("torch")
    with torch.no_grad():  # a different model state at checkpoint 2
        for p in model.parameters():
            p.mul_(0.5)
    mon.record(model, 2)
    nll = np.array([[2.0, 0.3], [2.0, 0.2], [2.0, 1.5], [0.1, 0.1]])  # examples 0, 1, 3 memorized
    base = Ledger.from_arrays(
        [e.id for e in ex],
        np.zeros((4, 2), int),
        k=1,
        target_nll=nll,
        routing={"cutoff": 0.8, "epsilon": 0.5, "delta": 0.1},
    )
    led = mon.attach(base)
    assert list(led.df.columns[-2:]) == ["pathway", "pathway_consistency"]
    again = read_ledger(_tmp_parquet(led))
    assert again.pivot("pathway").iloc[:, 0].tolist() == mon.columns()["pathway"][:, 0].tolist()

    s = R.routing_settings_from(again)
    assert (s.cutoff, s.epsilon, s.delta) == (0.8, 0.5, 0.1)
    t = R.routing_metrics(again, s)
    assert t["n_routing_samples"].tolist() == [3, 3]
    assert t["n_memorized"].tolist() == [1, 3]
    paths = mon.columns()["pathway"]
    for c in range(2):
        want = np.mean(
            [
                levenshtein(
                    pathway_symbols(R.parse_pathway(paths[a, c])).tolist(),
                    pathway_symbols(R.parse_pathway(paths[b, c])).tolist(),
                )
                for a, b in ((0, 1), (0, 3), (1, 3))
            ]
        )
        assert t["pathway_distance"][c] == pytest.approx(want)
        assert t["pathway_consistency"][c] == pytest.approx(np.mean(mon.consistency[c][[0, 1, 3]]))
    every = R.routing_metrics(again, RoutingSettings(memorized_only=False))
    assert every["n_routing_samples"].tolist() == [4, 4]
    per = R.per_example_routing(again, s)
    assert per["memorized_at"].tolist() == [2, 2, 0, 1]


def _tmp_parquet(led):
    import tempfile
    from pathlib import Path

    return led.to_parquet(Path(tempfile.mkdtemp()) / "ledger.parquet")


def test_metrics_refuse_a_ledger_without_routing():
    from curator.dynamics.ledger import Ledger
    from curator.errors import DataError

    led = Ledger.from_arrays(["a", "b"], np.zeros((2, 1), int), k=1, target_nll=np.ones((2, 1)))
    with pytest.raises(DataError, match="no routing columns"):
        R.routing_metrics(led)


def test_predict_ranks_routing_metrics_from_the_ledger():
    from curator.analysis.predict import make_run, metric_table, predict
    from curator.dynamics.ledger import Ledger

    # three checkpoints; pathways converge (distance falls) while test accuracy rises
    paths = np.array([["0|1", "0|1", "0|1"], ["2|3", "0|3", "0|1"], ["1|2", "1|1", "0|1"]], dtype=object)
    nll = np.full((3, 3), 0.3)  # perplexity 1.35 > p: PreMemAcc is plain accuracy here
    correct = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 1]])
    led = Ledger.from_arrays(
        ["a", "b", "c"],
        correct,
        k=1,
        target_nll=nll,
        signals={"pathway": paths, "pathway_consistency": np.full((3, 3), 0.5)},
        routing={"epsilon": 0.5, "delta": 0.1},
    )
    run = make_run("r", led, [0.2, 0.5, 0.9])
    tab = metric_table([run], 1.105)
    # checkpoint 1: pairs (a,b)=2, (a,c)=2, (b,c)=2; checkpoint 2: (a,b)=1, (a,c)=2, (b,c)=1; 3: all 0
    assert tab["pathway_distance"].tolist() == pytest.approx([2.0, 4 / 3, 0.0])
    rep = predict([run], p=1.105, n_boot=0)
    res = {r.metric: r for r in rep.results}
    assert res["pathway_distance"].fit.r < -0.9
    assert "constant" in res["pathway_consistency"].note


# ------------------------------------------------------------------ strategy


def test_routing_outliers_targets_the_idiosyncratic_memorized_example():
    from curator.data.example import Example
    from curator.dynamics.ledger import Ledger
    from curator.strategy import SelectionContext, build_strategy, run_selection

    train = [Example.make(f"q{i}", "s", "1", id=f"t{i}") for i in range(4)]
    # t0..t2 share a pathway; t3 is memorized along a pathway of its own; t2 is not memorized
    paths = np.array([["0|1"], ["0|1"], ["0|2"], ["3|3"]], dtype=object)
    nll = np.array([[0.1], [0.1], [2.0], [0.1]])
    led = Ledger.from_arrays(
        [e.id for e in train],
        np.zeros((4, 1), int),
        k=1,
        target_nll=nll,
        signals={"pathway": paths, "pathway_consistency": np.array([[0.9], [0.8], [0.1], [0.7]])},
        routing={"epsilon": 0.5, "delta": 0.1},
    )
    pool = [Example.make(f"p{i}", "s", "1", id=f"p{i}") for i in range(3)]
    vecs = {"t0": [1, 0], "t1": [1, 0], "t2": [0.9, 0.1], "t3": [0, 1], "p0": [1, 0], "p1": [0.1, 1], "p2": [0.7, 0.7]}

    class Sig:
        def embeddings(self, exs):
            v = np.array([vecs[e.id] for e in exs], np.float32)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

    strat = build_strategy("routing-outliers", {"fraction": 0.34})
    ctx = SelectionContext(pool=list(pool), train=train, ledger=led, signals=Sig())
    sel = run_selection(strat, ctx, 1)
    assert sel.ids == ["p1"]  # nearest to t3, the memorized outlier (t2 is not memorized)
    by_cons = build_strategy("routing-outliers", {"signal": "consistency", "fraction": 0.34})
    sel = run_selection(by_cons, SelectionContext(pool=list(pool), train=train, ledger=led, signals=Sig()), 1)
    assert sel.ids == ["p1"]  # t3 has the lowest consistency among memorized examples


def test_routing_outliers_needs_routing_in_the_ledger():
    from curator.data.example import Example
    from curator.dynamics.ledger import Ledger
    from curator.errors import StrategyError
    from curator.strategy import SelectionContext, build_strategy, run_selection

    train = [Example.make("q", "s", "1", id="t0")]
    led = Ledger.from_arrays(["t0"], np.zeros((1, 1), int), k=1, target_nll=np.ones((1, 1)))
    with pytest.raises(StrategyError, match="routing columns"):
        pool = [Example.make("p", "s", "1", id="p0")]
        run_selection(build_strategy("routing-outliers"), SelectionContext(pool=pool, train=train, ledger=led), 1)
    with pytest.raises(StrategyError, match="signal"):
        build_strategy("routing-outliers", {"signal": "loss"})


# ------------------------------------------------------------------ CLI


def test_cli_refuses_a_bad_cutoff(capsys):
    from curator.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["routing", "--cutoff", "1.5", "--out", "/nonexistent/never-written"])
    assert e.value.code == 2
    assert "cutoff must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_monitor_runs_inside_finetune(tok):
    from curator.models.moe import tiny_moe
    from curator.training import TrainSettings, finetune

    ex = _examples(6)
    model = tiny_moe("olmoe", seed=0, tokenizer=tok)
    mon = R.RoutingMonitor(ex, tok)
    finetune(
        model,
        tok,
        ex,
        None,
        TrainSettings(epochs=2, batch_size=3, learning_rate=1e-3, track_grad_variance=False),
        on_checkpoint=mon,
        progress=False,
    )
    cols = mon.columns()
    assert mon.checkpoints == [1, 2]
    assert cols["pathway"].shape == (6, 2) and np.isfinite(cols["pathway_consistency"]).all()


def test_pathway_set_from_weights_equals_from_paths():
    rng = np.random.default_rng(4)
    w = rng.dirichlet(np.full(5, 0.4), size=(30, 4))
    direct = PathwaySet.from_weights(w, 0.8)
    via = PathwaySet.from_paths(pathways(w, 0.8))
    i, j = np.triu_indices(30, 1)
    assert direct.lengths.tolist() == via.lengths.tolist()
    assert direct.distances(i, j).tolist() == via.distances(i, j).tolist()
