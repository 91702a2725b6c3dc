"""Generator mode: new examples are variants of training examples the strategy chose (Kang et al.).

Kang et al.'s curation code (github.com/katiekang1998/reasoning_data, ``gsm8k_train11.py`` and its
baselines ``gsm8k_train12_ifd.py``, ``gsm8k_train13_huer.py``) grows a training set the same way
for every method: a rule picks a subset of the *training* questions (PreMemAcc <= t; IFD above its
25th percentile; the longest solutions above the 25th percentile; all questions, for "random
copies"), and the new examples are variants of those questions. With a generative source curator
does the same, with one rule for every strategy built on `VariantsOfChosen`:

1. **Parents.** The strategy's own pool-mode rule is applied to the current training set S_r
   (as if S_r were the pool) to choose ``ceil(parents * |S_r|)`` training examples. For a
   score-then-top-k strategy that is its ``parents`` fraction of S_r with the highest scores;
   the default 0.75 is Kang's "above the 25th percentile". Examples scored -inf are never parents.
2. **Variants.** ``draw_variants`` asks the source for variants of the parents (``similar()``:
   same skill and shape, new names and numbers), spread evenly: every parent's first variant, then
   every parent's second, ... (``ceil(k / parents)`` made per parent). With more parents than the
   budget, a uniformly random ``k`` of them get one each. Kang drew uniformly without replacement
   from 4 fixed variants per question, which gives each kept question the same expected number;
   the even spread is that draw without its sampling noise (and without the cap of 4, since a
   generator can make any number).

A variant's score is its parent's score; the i.i.d. candidates the loop offers are not drawn from
and score NaN. In pool mode (a fixed pool) the same strategies score and pick pool candidates as
before. `iid` is not a variant strategy: in generator mode it draws fresh i.i.d. problems.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from curator.data.example import Example
from curator.errors import StrategyError
from curator.strategy import SelectionContext, Strategy, check_param, top_k


def variants_round_robin(
    ctx: SelectionContext, parents: list[Example], n_per: int
) -> tuple[list[Example], dict[str, str]]:
    """``n_per`` variants of each parent from ``ctx``'s source, in round-robin order over the
    parents (every parent's first variant, then every parent's second, ...), and new id -> parent id.
    """
    made = ctx.generate_similar(parents, n_per)
    groups: dict[str, list[Example]] = {p.id: [] for p in parents}
    parent_of: dict[str, str] = {}
    for pos, e in enumerate(made):
        parent = e.meta.get("parent_id") or e.meta.get("parent")
        if parent not in groups:
            # a source that does not name parents returns n_per per parent, in parent order
            parent = parents[min(pos // max(n_per, 1), len(parents) - 1)].id
        groups[parent].append(e)
        parent_of[e.id] = parent
    ordered: list[Example] = []
    for r in range(max((len(g) for g in groups.values()), default=0)):
        ordered.extend(g[r] for g in groups.values() if r < len(g))
    return ordered, parent_of


def draw_variants(ctx: SelectionContext, parents: list[Example], k: int, parent_score: dict[str, float]) -> list[str]:
    """Ids of ``k`` new variants of ``parents`` (in the given order), spread evenly; see module doc.

    Records NaN for the candidates already in the pool and each variant's parent score.
    """
    ctx.record_scores(ctx.ids, np.full(len(ctx.pool), np.nan))  # drawn anew, not from the pool
    if k <= 0 or not parents:
        return []
    if len(parents) > k:
        # Kang's draw is uniform over the kept questions: which k get a variant is random, but the
        # chosen ones keep the strategy's order
        keep = np.sort(ctx.rng.choice(len(parents), size=k, replace=False))
        parents = [parents[i] for i in keep]
    ordered, parent_of = variants_round_robin(ctx, parents, math.ceil(k / len(parents)))
    chosen = [e.id for e in ordered[:k]]
    ctx.record_scores(chosen, [parent_score.get(parent_of[i], np.nan) for i in chosen])
    return chosen


def over_train(ctx: SelectionContext) -> SelectionContext:
    """A context whose pool is the training set (a fixed pool: no generator), sharing ctx's
    ledger, signals and rng, so a strategy's pool rule can rank its own training examples."""
    return replace(ctx, pool=list(ctx.train), source=None, scores={}, notes=[])


def check_parents(strategy: str, parents: float) -> None:
    check_param(strategy, "parents", parents, isinstance(parents, (int, float)) and 0 < parents <= 1, "in (0, 1]")


class VariantsOfChosen(Strategy):
    """Pool mode: ``choose`` from the pool. Generator mode: variants of the parents
    ``choose_parents`` picks from the training set (module doc). Subclasses set ``self.parents``
    (a fraction of S_r) and override ``choose`` / ``choose_parents`` when they are set-level."""

    parents: float = 0.75

    def choose(self, ctx: SelectionContext, k: int) -> list[str]:
        """The pool-mode rule: by default score() then the shared top-k."""
        return Strategy.select(self, ctx, k)

    def ranks_by_score(self) -> bool:
        return type(self).choose is VariantsOfChosen.choose  # pool mode: choose() is the shared top-k

    def choose_parents(self, ctx: SelectionContext) -> tuple[list[Example], dict[str, float]]:
        """Training examples to make variants of, best first, and every training example's score.

        Default (score-then-top-k strategies): the ``ceil(parents * |S_r|)`` highest-scored
        training examples; -inf (ruled out by the method: an IFD above 1, an empty target) never.
        """
        sub = over_train(ctx)
        scores = np.asarray(self.score(sub), dtype=np.float64)
        if scores.shape != (len(sub.pool),):
            raise StrategyError(
                f"strategy {self.name!r}: score() returned shape {scores.shape} for the "
                f"{len(sub.pool)} training examples"
            )
        ids = sub.ids
        ok = np.flatnonzero(scores > -np.inf)
        m = min(len(ok), math.ceil(self.parents * len(ids)))
        chosen = top_k(scores[ok], m, [ids[i] for i in ok], ctx.rng)
        for note in sub.notes:
            ctx.note(note)
        by_id = {e.id: e for e in sub.pool}
        return [by_id[i] for i in chosen], dict(zip(ids, scores.tolist()))

    def select(self, ctx: SelectionContext, k: int) -> list[str]:
        if not ctx.generative:
            return self.choose(ctx, k)
        parents, score = self.choose_parents(ctx)
        if not parents:
            ctx.note(f"{self.name}: no training example qualifies as a parent; nothing generated")
        return draw_variants(ctx, parents, k, score)
