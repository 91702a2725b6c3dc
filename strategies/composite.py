"""`premem-diverse`: PreMemAcc-targeted region, k-center diversity inside it.

Built from the parts: `premem-threshold` finds the targets and the region of candidates nearest
to them (``region_factor * k`` of them, round-robin over targets); `embedding-diversity`'s
k-center greedy then picks k of the region that are far from each other and from the training set.
"""

from __future__ import annotations

import math

import numpy as np

from curator.strategy import SelectionContext, Strategy, check_param
from strategies.diversity import kcenter_greedy
from strategies.premem import PreMemThreshold, generate_round_robin


class PreMemDiverse(Strategy):
    """Diverse picks from near the training examples whose PreMemAcc is below the threshold."""

    name = "premem-diverse"
    needs = frozenset({"ledger", "embeddings"})
    description = "premem-threshold's target region (region_factor x k candidates), then k-center diversity inside it"

    def __init__(
        self, threshold: float = 0.75, region_factor: float = 4.0, eps: float = 0.05, fallback_fraction: float = 0.1
    ):
        check_param(
            self.name,
            "region_factor",
            region_factor,
            isinstance(region_factor, (int, float)) and region_factor >= 1,
            "a number >= 1",
        )
        check_param(self.name, "eps", eps, 0 <= eps < 1, "in [0, 1) (0 = exact greedy)")
        self.premem = PreMemThreshold(threshold=threshold, fallback_fraction=fallback_fraction)
        self.threshold, self.region_factor, self.eps = float(threshold), float(region_factor), float(eps)
        self.fallback_fraction = float(fallback_fraction)

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        targets, _ = self.premem.targets(ctx)
        m = math.ceil(self.region_factor * k)
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        if ctx.generative:
            ctx.record_scores(ctx.ids, np.full(len(ctx.pool), np.nan))  # drawn anew, not from the pool
            region, _ = generate_round_robin(ctx, targets, m)
            region_ids = [e.id for e in region]
            X = ctx.signals.embeddings(region)
        else:
            rows = self.premem.region(ctx, targets, m)
            ids = ctx.ids
            region_ids = [ids[i] for i in rows]
            X = ctx.signals.embeddings(ctx.pool)[rows]
            # outside the target region: never taken before a region member
            ctx.record_scores(ids, np.full(len(ids), -np.inf))
        T = ctx.signals.embeddings(ctx.train) if ctx.train else None
        picks, scores = kcenter_greedy(X, k, T, eps=self.eps, rng=ctx.rng)
        ctx.record_scores(region_ids, scores)
        return [region_ids[i] for i in picks]
