"""The Sampler protocol: generate completions and score targets, independent of the backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from curator.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled. Defaults follow the PreMemAcc paper (T=0.8, top_p=0.95).

    temperature=0 means greedy decoding.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ("\nDone.",)
    seed: int = 0

    def __post_init__(self):
        problems = []
        if self.temperature < 0:
            problems.append(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if problems:
            raise ConfigError(problems)


@runtime_checkable
class Sampler(Protocol):
    """A backend that samples from, and scores targets under, one model state.

    Optional: a backend whose ``generate`` also takes ``n`` as a sequence with one count per
    prompt sets the class attribute ``accepts_counts = True``; the dynamics tracker then draws a
    round of uneven per-example sample counts in one call instead of one call per count.
    """

    def generate(self, prompts: Sequence[str], n: int, params: SamplingParams) -> list[list[str]]:
        """n completions per prompt (stop strings cut off), in prompt order."""
        ...

    def target_logprobs(self, prompts: Sequence[str], targets: Sequence[str]) -> list[np.ndarray]:
        """Per-token log-probabilities of each target given its prompt, teacher forced.

        One float array per pair, covering every target token as `encode_pair` tokenizes it.
        """
        ...
