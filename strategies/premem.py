"""`premem-threshold`: the PreMemAcc curation rule (Kang et al., arXiv 2411.07681, §5).

Training examples whose PreMemAcc (final checkpoint, perplexity threshold p from the context) is
at or below ``threshold`` (t; the authors' code keeps PreMemAcc <= 0.75) are the ones the model
memorised before it could solve them; they define the target distribution. New examples come from
near them — from a fixed pool, the candidates nearest to them (exact inner product over
L2-normalised embeddings), taken round-robin over the targets so that every target gets its share
instead of a few dense ones absorbing the budget; from a generative source, variants of the
targets drawn as Kang et al.'s loop does (strategies/variants.py: spread evenly, and a uniformly
random k of them when there are more targets than the budget k).

Fallback: when no training example is at or below the threshold, the ``fallback_fraction`` of
training examples with the lowest PreMemAcc are the targets instead, and the selection note says so.
"""

from __future__ import annotations

import math

import numpy as np

from curator.data.example import Example
from curator.errors import StrategyError
from curator.strategy import SelectionContext, Strategy, check_param
from strategies.variants import draw_variants, variants_round_robin


def final_premem(ctx: SelectionContext) -> dict[str, float]:
    """Example id -> PreMemAcc at the ledger's last checkpoint (undetermined ones left out)."""
    from curator.dynamics.metrics import premem_acc  # lazy: pulls in pandas

    if ctx.ledger is None:
        raise StrategyError(
            "premem strategies need the last round's ledger (ctx.ledger is None); "
            "track dynamics on the training set before selecting"
        )
    table = premem_acc(ctx.ledger, ctx.p)
    last = table.iloc[:, -1]
    return {str(i): float(v) for i, v in last.items() if not np.isnan(v)}


def premem_targets(ctx: SelectionContext, t: float, fallback_fraction: float) -> tuple[list[Example], dict[str, float]]:
    """Training examples with PreMemAcc <= t, lowest first (ties in rng order); see module doc."""
    pm = final_premem(ctx)
    train = [e for e in ctx.train if e.id in pm]
    if not train:
        raise StrategyError(
            "no training example has a PreMemAcc in the ledger; the ledger does not "
            "cover ctx.train (wrong round's ledger?)"
        )
    if len(train) < len(ctx.train):
        ctx.note(
            f"{len(ctx.train) - len(train)} training examples have no determined PreMemAcc "
            "at the final checkpoint and were not considered"
        )
    vals = np.array([pm[e.id] for e in train])
    order = np.lexsort((ctx.rng.permutation(len(train)), vals))
    below = [train[i] for i in order if vals[i] <= t]
    if below:
        return below, pm
    n = max(1, math.ceil(fallback_fraction * len(train)))
    ctx.note(
        f"no training example has PreMemAcc < threshold={t} or at it; targeting the {n} with the lowest "
        f"PreMemAcc instead (fallback_fraction={fallback_fraction}, max {vals.min():.3f})"
    )
    return [train[i] for i in order[:n]], pm


def scan_targets(X: np.ndarray, T: np.ndarray, q: int, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the candidates X against the targets T (inner products).

    Returns each candidate's largest similarity to a target, and each target's q most similar
    candidates, best first (ties: lower row first; -1 pads when X has fewer than q rows).

    Why not ``faiss.knn(T, X, q)``: FAISS brute force is built for many queries against a
    database; a few hundred targets against 1M candidates ran several times slower there than one
    blocked GEMM pass that keeps each target's running top-q behind a threshold (see
    docs/PERFORMANCE.md). The same pass yields every candidate's score.
    """
    N, nT = len(X), len(T)
    q = min(int(q), N)
    T = np.ascontiguousarray(T, np.float32)
    best: np.ndarray = np.empty(N, np.float64)
    top_i: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(nT)]
    top_s: list[np.ndarray] = [np.zeros(0, np.float32) for _ in range(nT)]
    tau: np.ndarray = np.full(nT, -np.inf, np.float32)  # a target's q-th best so far: only better rows matter
    for s in range(0, N, chunk):
        S = T @ np.asarray(X[s : s + chunk], np.float32).T  # [targets, rows]
        best[s : s + S.shape[1]] = S.max(0)
        for t in range(nT):
            row = S[t]
            sel = np.flatnonzero(row > tau[t])
            if sel.size == 0:
                continue
            if sel.size > q:
                sel = sel[np.argpartition(-row[sel], q - 1)[:q]]
            ci, cs = np.concatenate([top_i[t], sel + s]), np.concatenate([top_s[t], row[sel]])
            if len(ci) > q:
                keep = np.argpartition(-cs, q - 1)[:q]
                ci, cs = ci[keep], cs[keep]
            top_i[t], top_s[t] = ci, cs
            if len(ci) == q:
                tau[t] = cs.min()
    ranked: np.ndarray = np.full((nT, q), -1, np.int64)
    for t in range(nT):
        order = np.lexsort((top_i[t], -top_s[t]))
        ranked[t, : len(order)] = top_i[t][order]
    return best, ranked


def round_robin(ranked: np.ndarray, m: int) -> np.ndarray:
    """Rows from per-target ranked lists: every target's 1st, then every target's 2nd, ... (no repeats)."""
    flat = ranked.T.reshape(-1)  # rank-major
    flat = flat[flat >= 0]
    uniq, first = np.unique(flat, return_index=True)
    return uniq[np.argsort(first, kind="stable")][:m]


def nearest_round_robin(X: np.ndarray, T: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to m rows of X, the targets' nearest taken round-robin (targets in the given order), and
    every row's best similarity to a target."""
    N = len(X)
    m = min(int(m), N)
    if len(T) == 0 or N == 0:
        return np.zeros(0, np.int64), np.full(N, -np.inf)
    q = min(N, math.ceil(m / len(T)) + 8)
    while True:
        best, ranked = scan_targets(X, T, q)
        rows = round_robin(ranked, m)
        if len(rows) >= m or q >= N:
            return rows, best
        q = min(N, 2 * q)  # neighbour lists overlap too much: look further


def generate_round_robin(
    ctx: SelectionContext, targets: list[Example], total: int
) -> tuple[list[Example], dict[str, str]]:
    """Ask a generative source for about ``total`` examples similar to the targets, spread evenly.

    Returns the new examples in round-robin order over their parents, and new id -> parent id.
    """
    targets = targets[:total]  # more targets than budget: the lowest-PreMemAcc ones, one each
    return variants_round_robin(ctx, targets, math.ceil(total / len(targets)))


class PreMemThreshold(Strategy):
    """Candidates near the training examples whose PreMemAcc is below the threshold."""

    name = "premem-threshold"
    needs = frozenset({"ledger", "embeddings"})
    description = (
        "the paper's rule: new examples near (pool) or variants of (generator) the training examples "
        "with PreMemAcc <= threshold, spread over them"
    )

    def __init__(self, threshold: float = 0.75, fallback_fraction: float = 0.1):
        check_param(
            self.name, "threshold", threshold, isinstance(threshold, (int, float)) and 0 < threshold <= 1, "in (0, 1]"
        )
        check_param(
            self.name,
            "fallback_fraction",
            fallback_fraction,
            isinstance(fallback_fraction, (int, float)) and 0 < fallback_fraction <= 1,
            "in (0, 1]",
        )
        self.threshold, self.fallback_fraction = float(threshold), float(fallback_fraction)

    def targets(self, ctx: SelectionContext) -> tuple[list[Example], dict[str, float]]:
        return premem_targets(ctx, self.threshold, self.fallback_fraction)

    def region(self, ctx: SelectionContext, targets: list[Example], m: int) -> np.ndarray:
        """Pool row indices near the targets (round-robin, up to m); records max-similarity scores."""
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        X = ctx.signals.embeddings(ctx.pool)
        T = ctx.signals.embeddings(targets)
        rows, best = nearest_round_robin(X, T, m)
        ctx.record_scores(ctx.ids, best)
        return rows

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        targets, pm = self.targets(ctx)
        if ctx.generative:
            # score = 1 - the parent's PreMemAcc (lower PreMemAcc = take first)
            return draw_variants(ctx, targets, k, {t.id: 1.0 - pm[t.id] for t in targets})
        ids = ctx.ids
        return [ids[i] for i in self.region(ctx, targets, k)]
