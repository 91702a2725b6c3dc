"""`iid`: uniform random selection from the pool (the baseline every curve is compared with)."""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext, Strategy


class IID(Strategy):
    """Uniform random candidates, seeded by the round's rng."""

    name = "iid"
    needs = frozenset()
    description = "uniform random sample of the pool (seeded); the baseline"

    def score(self, ctx: SelectionContext) -> np.ndarray:
        # i.i.d. uniform scores + top-k = a uniform random k-subset
        return ctx.rng.random(len(ctx.pool))
