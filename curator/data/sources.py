"""Where candidate examples come from: a fixed pool, or a generator that can make more.

A loop asks a Source for its `candidates()`; a generative source can also make new examples
*similar to* given ones (same skill and structure), which is how curation "collects more from the
distribution of hard examples" when the task family allows it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from curator.data.example import Example
from curator.errors import ConfigError, CuratorError


@runtime_checkable
class Source(Protocol):
    """Candidates for selection; generative sources can also make similar examples."""

    generative: bool

    def candidates(self) -> list[Example]:
        """The current candidate pool (deterministic)."""
        ...

    def similar(self, examples: Sequence[Example], n_per: int, seed: int) -> list[Example]:
        """`n_per` new examples like each given one (generative sources only)."""
        ...


class PoolSource:
    """A fixed pool of examples: selection picks from it, nothing new can be made."""

    generative = False

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)
        ids = [e.id for e in self.examples]
        if len(set(ids)) != len(ids):
            raise CuratorError("pool has duplicate example ids; ids must be unique")

    def candidates(self) -> list[Example]:
        return list(self.examples)

    def similar(self, examples: Sequence[Example], n_per: int, seed: int) -> list[Example]:
        raise CuratorError(
            "a fixed pool source cannot make new examples similar to others; "
            "use a generator source (e.g. synthetic:easy) or select from the pool"
        )

    def __repr__(self) -> str:
        return f"PoolSource({len(self.examples)} examples)"


class GeneratorSource:
    """A synthetic task family: an i.i.d. pool of `pool_size` problems, plus `similar`."""

    generative = True

    def __init__(self, task, pool_size: int = 1000, seed: int = 0):
        if pool_size < 1:
            raise ConfigError(f"pool_size must be >= 1, got {pool_size}")
        self.task, self.pool_size, self.seed = task, pool_size, seed
        self._pool: list[Example] | None = None
        self._held_out: frozenset[str] = frozenset()

    def hold_out(self, examples: Sequence[Example]) -> None:
        """Never make or offer a problem whose question is one of these (the test set).

        Ids cannot guard it: an id hashes question and solution, and a generated problem can
        repeat a test question with another of its solution traces (about 1 in 700 variants of the
        organism's 1-2 step task did), which would train on a test question.
        """
        held = frozenset(e.question for e in examples)
        if held != self._held_out:  # every strategy's loop calls this: remake the pool only on a change
            self._held_out, self._pool = held, None

    def candidates(self) -> list[Example]:
        """A deterministic i.i.d. pool (made once, then reused), without held-out questions."""
        if self._pool is None:
            made = self.task.generate(self.pool_size, seed=self.seed)
            self._pool = [e for e in made if e.question not in self._held_out]
        return list(self._pool)

    def similar(self, examples: Sequence[Example], n_per: int, seed: int) -> list[Example]:
        """`n_per` new problems per example; each example's draw depends only on (seed, its id),
        so the result does not depend on the order the examples are given in."""
        if n_per < 0:
            raise ConfigError(f"n_per must be >= 0, got {n_per}")
        out: list[Example] = []
        taken = {e.id for e in self.candidates()} | {e.id for e in examples}
        for ex in examples:
            sub = int.from_bytes(hashlib.sha1(f"{seed}:{ex.id}".encode()).digest()[:8], "big")
            out.extend(self._fresh(ex, n_per, sub, taken))
        return out

    def _fresh(self, ex: Example, n: int, seed: int, taken: set[str]) -> list[Example]:
        """Up to n problems like ``ex`` that the caller does not have and that are not held out.

        The task's draws for one (seed, example) are a fixed sequence, so asking for a few more
        than n and skipping the held-out ones keeps the same first problems as asking for n.
        """
        extra = 0
        while True:
            made = self.task.similar(ex, n + extra, seed=seed)
            fresh = [e for e in made if e.id not in taken and e.question not in self._held_out][:n]
            if len(fresh) == n or len(made) < n + extra or extra >= 16 or not self._held_out:
                break
            extra += 4
        taken.update(e.id for e in fresh)  # never hand back an example the caller already has
        return fresh

    def __repr__(self) -> str:
        return f"GeneratorSource({self.task!r}, pool_size={self.pool_size}, seed={self.seed})"
