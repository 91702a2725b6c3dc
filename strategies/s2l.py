"""`s2l`: SmallToLarge (Yang et al. 2024) — cluster loss trajectories, sample evenly across clusters.

S2L records each example's training loss at every checkpoint of a small model's run, clusters
those trajectories with k-means, and spends the budget evenly over the clusters (smallest first,
each taking at most its share of what is left), so examples that learn alike are not over-drawn.

In the active loop the trajectories that exist are the ledger's: the target loss of each training
example at each checkpoint of this round's run (the model being curated is its own small model).
Pool candidates have no trajectory yet, so each inherits the cluster of its nearest training
example in embedding space; the budget is then spread evenly over the clusters, drawing uniformly
within each. With no ledger (nothing trained yet) it falls back to uniform sampling and says so.

Generator mode (strategies/variants.py): the training examples themselves are clustered and the
parents are 3/4 of them (``VariantsOfChosen.parents``) drawn by the same balanced rule; the new examples are
their variants.
"""

from __future__ import annotations

import math

import numpy as np

from curator.data.example import Example
from curator.strategy import SelectionContext, check_param
from strategies.variants import VariantsOfChosen


def kmeans(X: np.ndarray, c: int, rng: np.random.Generator, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns one cluster label per row of X."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    c = max(1, min(int(c), n))
    centers = [X[int(rng.integers(n))]]
    for _ in range(1, c):
        d2 = np.min(((X[:, None, :] - np.array(centers)[None]) ** 2).sum(-1), axis=1)
        if d2.sum() <= 0:
            break  # fewer distinct trajectories than clusters
        centers.append(X[int(rng.choice(n, p=d2 / d2.sum()))])
    C = np.array(centers)
    labels: np.ndarray = np.zeros(n, np.int64)
    for it in range(iters):
        new = np.argmin(((X[:, None, :] - C[None]) ** 2).sum(-1), axis=1)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(C)):
            if (labels == j).any():
                C[j] = X[labels == j].mean(0)
    return labels


def balanced_sample(groups: list[np.ndarray], k: int, rng: np.random.Generator) -> list[int]:
    """S2L's balanced draw: smallest group first, each taking up to an even share of what is left."""
    picks: list[int] = []
    order = sorted(range(len(groups)), key=lambda g: (len(groups[g]), g))
    left = k
    for pos, g in enumerate(order):
        share = left // (len(order) - pos) if pos < len(order) - 1 else left
        share = min(share, len(groups[g]))
        picks.extend(int(i) for i in rng.permutation(groups[g])[:share])
        left -= share
    if left > 0:  # small groups ran out: fill uniformly from what remains
        rest = np.setdiff1d(np.concatenate(groups), np.array(picks, np.int64))
        picks.extend(int(i) for i in rng.permutation(rest)[:left])
    return picks


class SmallToLarge(VariantsOfChosen):
    """Even draws over k-means clusters of loss trajectories (ledger), pool assigned by embedding."""

    name = "s2l"
    needs = frozenset({"ledger", "embeddings"})
    description = (
        "SmallToLarge: k-means over training examples' loss trajectories, pool joins its "
        "nearest trained example's cluster, budget spread evenly over clusters; generator mode: "
        "variants of 3/4 of the training set drawn evenly over the clusters"
    )

    def __init__(self, clusters: int = 8):
        check_param(self.name, "clusters", clusters, isinstance(clusters, int) and clusters >= 1, "an integer >= 1")
        self.clusters = clusters

    def _train_clusters(self, ctx: SelectionContext) -> tuple[list[Example], np.ndarray] | None:
        """Training examples with a trajectory and their cluster labels; None before any ledger."""
        if ctx.ledger is None or not ctx.train:
            return None
        traj = ctx.ledger.pivot("target_nll")
        train = [e for e in ctx.train if e.id in traj.index]
        T = traj.loc[[e.id for e in train]].to_numpy(np.float64)
        T = np.where(np.isnan(T), np.nanmean(T), T)
        return train, kmeans(T, self.clusters, ctx.rng)

    def choose(self, ctx: SelectionContext, k: int) -> list[str]:
        ids = ctx.ids
        clustered = self._train_clusters(ctx)
        if clustered is None:
            ctx.note("s2l: no ledger yet (nothing trained); sampling uniformly")
            picks = list(ctx.rng.permutation(len(ids))[:k])
        else:
            train, labels = clustered
            assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
            X = ctx.signals.embeddings(ctx.pool)
            E = ctx.signals.embeddings(train)
            nearest = np.argmax(X @ E.T, axis=1)  # unit rows: inner product = cosine similarity
            pool_labels = labels[nearest]
            groups = [np.flatnonzero(pool_labels == c) for c in np.unique(pool_labels)]
            picks = balanced_sample(groups, k, ctx.rng)
        scores = np.zeros(len(ids))
        scores[picks] = np.arange(len(picks), 0, -1)  # pick order: the first pick scores highest
        ctx.record_scores(ids, scores)
        return [ids[i] for i in picks]

    def choose_parents(self, ctx: SelectionContext) -> tuple[list[Example], dict[str, float]]:
        # training examples have trajectories of their own: S2L's balanced draw runs on them
        # directly, no embedding step
        m = math.ceil(self.parents * len(ctx.train))
        clustered = self._train_clusters(ctx)
        if clustered is None:
            ctx.note("s2l: no ledger yet (nothing trained); parents drawn uniformly")
            train = list(ctx.train)
            picks = [int(i) for i in ctx.rng.permutation(len(train))[:m]]
        else:
            train, labels = clustered
            groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
            picks = balanced_sample(groups, min(m, len(train)), ctx.rng)
        order = {train[i].id: float(len(picks) - r) for r, i in enumerate(picks)}
        return [train[i] for i in picks], order
