"""`ifd`: instruction-following difficulty (Li et al. 2023, "From Quantity to Quality", Cherry LLM).

IFD(Q, A) = s(A | Q) / s(A): the mean per-token cross-entropy of the target A given the question
Q, divided by its mean cross-entropy without the question (the prompt template with the question
left empty, as the authors' code keeps the response marker and drops the instruction). A high IFD
means the question helps the model little towards its answer — a hard example to learn to follow;
the paper selects the highest. An IFD above 1 means the question makes the answer *less* likely:
the paper treats such pairs as misaligned and drops them, so they score -inf here (never taken
before a pair that scores). Both losses come from the current round's finetuned model, as every
other signal in the loop does (the paper scores with a "pre-experienced" model, one briefly
finetuned on a small sample of the data).

Generator mode (strategies/variants.py): variants of the ``parents`` fraction of the training set
with the highest IFD — default 0.75, Kang et al.'s baseline "IFD above its 25th percentile".
"""

from __future__ import annotations

import numpy as np

from curator.strategy import SelectionContext
from strategies.variants import VariantsOfChosen, check_parents


def ifd_scores(conditioned: np.ndarray, direct: np.ndarray) -> np.ndarray:
    """s(A|Q) / s(A) per example; -inf where it exceeds 1 or is undefined (empty target, s(A) = 0)."""
    conditioned = np.asarray(conditioned, dtype=np.float64)
    direct = np.asarray(direct, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = conditioned / direct
    return np.where(np.isfinite(ratio) & (ratio <= 1.0), ratio, -np.inf)


class InstructionFollowingDifficulty(VariantsOfChosen):
    """Highest IFD = s(A|Q) / s(A) first; pairs with IFD above 1 never (Li et al. 2023)."""

    name = "ifd"
    needs = frozenset({"losses"})
    description = (
        "instruction-following difficulty (Cherry LLM): target loss with the question / without it, "
        "highest first, IFD > 1 dropped; generator mode: variants of the top `parents` fraction"
    )

    def __init__(self, parents: float = 0.75):
        check_parents(self.name, parents)
        self.parents = float(parents)

    def score(self, ctx: SelectionContext) -> np.ndarray:
        assert ctx.signals is not None  # the loop gives a strategy the signals its `needs` declares
        return ifd_scores(ctx.signals.losses(ctx.pool), ctx.signals.losses(ctx.pool, given_question=False))
