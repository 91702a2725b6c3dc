"""`ShardedSampler`: split one sampler call across the ranks of a launch and gather the answers.

Each rank samples (or scores) its share of the prompts with its own copy of the model, then every
rank receives all the answers, in prompt order. Because `HFSampler` seeds each sample from
(seed, prompt tokens, which repeat of that prompt in the call, sample index), the answers do not
depend on how prompts are split, so a launch with N ranks gives the one-process result. To keep
"which repeat" the same, every copy of a prompt goes to the same rank, in its original order.

This module is the one rule for laying a measurement out across ranks (`split_here`, `sharded`,
`gather_rows`) and for the state a model is measured in (`measuring`: eval mode, no autocast);
the round engine's `CheckpointMeasurer`, `curate measure`, `PreMemCallback` and the routing
monitor all go through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from curator import distributed
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


def split_here(info: Any = None) -> tuple[int, int]:
    """(this rank's share index, number of shares) for a measurement: the launch's rank and world
    size, except where every rank must run the same forward passes (one share of everything).

    ``info`` (a `CheckpointInfo`, optional) says whether the parameters are sharded (FSDP: a
    forward pass all-gathers them, so no rank may skip one). The launch's layout is read from the
    process group itself, never from ``info``'s defaults: a checkpoint measured outside `finetune`
    (a Trainer callback, `curate measure`) carries no launch layout of its own.
    """

    world = distributed.world_size()
    if world <= 1 or bool(getattr(info, "params_sharded", False)):
        return 0, 1
    return distributed.rank(), world


def sharded(sampler: Any, info: Any = None) -> Any:
    """``sampler`` split across the launch's ranks when there are several (else itself)."""

    rank, world = split_here(info)
    if world <= 1:
        return sampler
    # a vLLM engine split by tensor parallelism serves a group of ranks: shard over the groups
    tp = int(getattr(sampler, "tensor_parallel_size", 1) or 1)
    return ShardedSampler(
        sampler, rank // tp, world // tp, lambda obj: distributed.gather_objects(obj, "gathering sampled results")[::tp]
    )


def gather_rows(n: int, compute: Callable[[list[int]], Any], info: Any = None) -> np.ndarray:
    """``compute(indices)`` for this rank's share of ``range(n)`` (row i on rank i % world), then
    every rank's rows put back in order: the one-process ``compute(list(range(n)))`` on every rank.

    ``compute`` returns an array with one row per index; it is not called for an empty share.
    """

    rank, world = split_here(info)
    if world <= 1:
        return np.asarray(compute(list(range(n))))
    mine = list(range(rank, n, world))
    local = np.asarray(compute(mine)) if mine else None
    parts = distributed.gather_objects((mine, local), "gathering measured rows")
    shape = next(p.shape[1:] for idx, p in parts if idx)
    dtype = next(p.dtype for idx, p in parts if idx)
    out = np.empty((n, *shape), dtype=dtype)
    for idx, rows in parts:
        if idx:
            out[idx] = rows
    return out


@contextlib.contextmanager
def measuring(model: Any) -> Iterator[Any]:
    """``model`` in eval mode and with its own forward while inside the block, as it was after.

    Under mixed precision (bf16/fp16) accelerate replaces ``model.forward`` with an autocast
    wrapper for training and keeps the plain one in ``_original_forward``. Measuring through the
    wrapper would score the weights at autocast precision, so a ledger measured during training
    would differ from the one `curate measure` computes from the very same saved weights; the
    plain forward is the model itself (bf16 weights still run in bf16).
    """
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with without_autocast(model) as m:
            yield m
    finally:
        if hasattr(model, "train"):
            model.train(was_training)


@contextlib.contextmanager
def without_autocast(model: Any) -> Iterator[Any]:
    """Run ``model`` with its own forward (not accelerate's autocast wrapper) inside the block."""
    plain = getattr(model, "__dict__", {}).get("_original_forward")
    if plain is None:
        yield model
        return
    wrapped = model.__dict__.get("forward")
    model.forward = plain
    try:
        yield model
    finally:
        if wrapped is not None:
            model.forward = wrapped
        else:
            del model.forward
