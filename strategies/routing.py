"""`routing-outliers`: new examples near the training examples the MoE memorized along
idiosyncratic routing pathways (Li, Fan & Zhou, arXiv 2506.21551; docs/ROUTING.md).

In the paper, memorized samples whose pathways stay far from other samples' pathways (high
pathway distance) or jump between unrelated experts from layer to layer (low pathway
consistency) are those memorized without generalizing. This strategy reads both from the last
round's ledger (columns ``pathway`` / ``pathway_consistency``, recorded by
`curator.dynamics.routing.RoutingMonitor`), takes the ``fraction`` of memorized training examples
that score worst as targets, and draws new examples near them exactly as `premem-threshold` does
(nearest pool candidates round-robin over targets; a generative source makes similar ones).
"""

from __future__ import annotations

import math

import numpy as np

from curator.data.example import Example
from curator.errors import StrategyError
from curator.strategy import SelectionContext, Strategy, check_param
from strategies.premem import generate_round_robin, nearest_round_robin

SIGNALS = ("distance", "consistency")


class RoutingOutliers(Strategy):
    """Candidates near memorized training examples with the most idiosyncratic routing pathways."""

    name = "routing-outliers"
    needs = frozenset({"ledger", "embeddings"})
    description = (
        "MoE only: draw near the memorized training examples with the highest pathway distance "
        "(or lowest pathway consistency), round-robin over them"
    )

    def __init__(self, signal: str = "distance", fraction: float = 0.25):
        check_param(self.name, "signal", signal, signal in SIGNALS, f"one of {', '.join(SIGNALS)}")
        check_param(
            self.name, "fraction", fraction, isinstance(fraction, (int, float)) and 0 < fraction <= 1, "in (0, 1]"
        )
        self.signal, self.fraction = signal, float(fraction)

    def targets(self, ctx: SelectionContext) -> tuple[list[Example], dict[str, float]]:
        """The worst-scoring ``fraction`` of memorized training examples, worst first; id -> score."""
        # lazy: pulls in pandas
        from curator.dynamics.routing import (
            has_routing,
            per_example_routing,
            routing_settings_from,
        )

        if ctx.ledger is None or not has_routing(ctx.ledger):
            raise StrategyError(
                f"strategy {self.name!r} needs a ledger with routing columns (pathway, "
                "pathway_consistency); record them with RoutingMonitor on an MoE model "
                "(docs/ROUTING.md)"
            )
        per = per_example_routing(ctx.ledger, routing_settings_from(ctx.ledger))
        raw = per["pathway_distance"] if self.signal == "distance" else -per["pathway_consistency"]
        train = [e for e in ctx.train if e.id in per.index and np.isfinite(raw.get(e.id, np.nan))]
        if not train:
            raise StrategyError(
                f"strategy {self.name!r}: no training example has a routing score in the ledger (wrong round's ledger?)"
            )
        memorized = [e for e in train if per.loc[e.id, "memorized_at"] > 0]
        if not memorized:
            ctx.note(
                f"{self.name}: no training example is memorized under the ledger's routing rule; "
                "ranking all training examples instead"
            )
            memorized = train
        score = {e.id: float(raw[e.id]) for e in memorized}
        vals = np.array([score[e.id] for e in memorized])
        order = np.lexsort((ctx.rng.permutation(len(memorized)), -vals))
        n = max(1, math.ceil(self.fraction * len(memorized)))
        return [memorized[i] for i in order[:n]], score

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        targets, score = self.targets(ctx)
        if ctx.generative:
            ctx.record_scores(ctx.ids, np.full(len(ctx.pool), np.nan))  # drawn anew, not from the pool
            new, parent_of = generate_round_robin(ctx, targets, k)
            ctx.record_scores([e.id for e in new], [score[parent_of[e.id]] for e in new])
            return [e.id for e in new[:k]]
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        X = ctx.signals.embeddings(ctx.pool)
        T = ctx.signals.embeddings(targets)
        rows, best = nearest_round_robin(X, T, k)
        ctx.record_scores(ctx.ids, best)
        ids = ctx.ids
        return [ids[i] for i in rows]
