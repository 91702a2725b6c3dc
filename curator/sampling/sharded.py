"""`ShardedSampler`: split one sampler call across the ranks of a launch and gather the answers.

Each rank samples (or scores) its share of the prompts with its own copy of the model, then every
rank receives all the answers, in prompt order. Because `HFSampler` seeds each sample from
(seed, prompt tokens, which repeat of that prompt in the call, sample index), the answers do not
depend on how prompts are split, so a launch with N ranks gives the one-process result. To keep
"which repeat" the same, every copy of a prompt goes to the same rank, in its original order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from curator.sampling.base import SamplingParams


class ShardedSampler:
    """A Sampler over ``inner`` whose work is split across ``world`` ranks (this one is ``rank``).

    ``gather(obj)`` returns every rank's ``obj`` in rank order (`curator.distributed.gather_objects`).
    """

    def __init__(self, inner: Any, rank: int, world: int, gather: Callable[[Any], list[Any]]):
        self.inner = inner
        self.rank, self.world = int(rank), int(world)
        self.gather = gather
        self.accepts_counts = bool(getattr(inner, "accepts_counts", False))
        self.model = getattr(inner, "model", None)  # deferred tracking checks what the sampler reads

    def _mine(self, keys: Sequence[Any]) -> list[int]:
        groups: dict[Any, int] = {}
        for key in keys:
            groups.setdefault(key, len(groups))
        return [i for i, key in enumerate(keys) if groups[key] % self.world == self.rank]

    def generate(self, prompts: Sequence[str], n: Any, params: SamplingParams) -> list[list[str]]:
        mine = self._mine(list(prompts))
        per_prompt = not isinstance(n, (int, np.integer))
        local: list[list[str]] = []
        if mine:
            local = self.inner.generate([prompts[i] for i in mine], [n[i] for i in mine] if per_prompt else n, params)
        out: list[Any] = [None] * len(prompts)
        for idx, outs in self.gather((mine, local)):
            for i, o in zip(idx, outs):
                out[i] = o
        return out

    def target_logprobs(self, prompts: Sequence[str], targets: Sequence[str]) -> list[np.ndarray]:
        mine = [i for i in range(len(prompts)) if i % self.world == self.rank]
        local = self.inner.target_logprobs([prompts[i] for i in mine], [targets[i] for i in mine]) if mine else []
        out: list[Any] = [None] * len(prompts)
        for idx, lps in self.gather((mine, [np.asarray(x) for x in local])):
            for i, lp in zip(idx, lps):
                out[i] = lp
        return out
