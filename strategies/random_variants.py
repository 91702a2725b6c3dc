"""`random-variants`: new examples like randomly chosen training examples (Kang et al.'s "random
copies" baseline).

It isolates what targeting adds: `premem-threshold` makes variants of the training examples with
low PreMemAcc, this makes them of training examples chosen without looking at anything. Generator
mode (strategies/variants.py): the parents are a uniformly random ``parents`` fraction of the
training set (default all of it, as Kang drew among the variants of every question), and the new
examples are their variants. Pool mode: the pool's analogue of a variant is a near neighbour, so
it takes the candidates nearest to the training examples in a random order, round-robin over them
— `premem-threshold`'s pool rule with random targets.
"""

from __future__ import annotations

import math

from curator.data.example import Example
from curator.strategy import SelectionContext, top_k
from strategies.premem import nearest_round_robin
from strategies.variants import VariantsOfChosen, check_parents


class RandomVariants(VariantsOfChosen):
    """Variants (generator) or nearest neighbours (pool) of randomly ordered training examples."""

    name = "random-variants"
    needs = frozenset({"embeddings"})  # pool mode only: generating needs no signal
    description = (
        "Kang et al.'s random-copies baseline: variants of a random `parents` fraction of the "
        "training set (generator), or the pool's nearest neighbours of random training examples"
    )

    def __init__(self, parents: float = 1.0):
        check_parents(self.name, parents)
        self.parents = float(parents)

    def _random_train(self, ctx: SelectionContext) -> list[Example]:
        order = ctx.rng.permutation(len(ctx.train))
        return [ctx.train[i] for i in order[: math.ceil(self.parents * len(ctx.train))]]

    def choose(self, ctx: SelectionContext, k: int) -> list[str]:
        ids = ctx.ids
        targets = self._random_train(ctx)
        if not targets:
            ctx.note("random-variants: no training set yet; sampling the pool uniformly")
            scores = ctx.rng.random(len(ids))
            ctx.record_scores(ids, scores)
            return top_k(scores, k, ids, ctx.rng)
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        X = ctx.signals.embeddings(ctx.pool)
        T = ctx.signals.embeddings(targets)
        rows, best = nearest_round_robin(X, T, k)
        ctx.record_scores(ids, best)
        return [ids[i] for i in rows]

    def choose_parents(self, ctx: SelectionContext) -> tuple[list[Example], dict[str, float]]:
        parents = self._random_train(ctx)
        # score = draw order, the first drawn highest (nothing else distinguishes them)
        return parents, {p.id: float(len(parents) - r) for r, p in enumerate(parents)}
