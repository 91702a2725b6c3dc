"""Cheap training-time statistics: gradient variance across steps and distance from initialisation.

Both exist so that `curate predict` can compare PreMemAcc with the generalization proxies the
PreMemAcc paper compares against (DESIGN §1, claim 1). They cost one float32 copy of the trainable
parameters each (the gradient sum on the parameters' device, the initial values on CPU) and a few
fused reductions per optimizer step — nothing per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: the local shard of an FSDP2 (DTensor) parameter or
    gradient, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


class GradStats:
    """Running moments of the optimizer-step gradient g_t (all trainable parameters, flattened).

    Over the T steps of a window (the steps since the previous checkpoint):

        grad_variance = (1/T) * sum_t ||g_t - mean_g||^2  =  (1/T) * sum_t ||g_t||^2 - ||mean_g||^2
        grad_norm     = (1/T) * sum_t ||g_t||

    computed from running sums, so only sum_t g_t is kept (in ``buffer_dtype``: float32 by
    default; bfloat16 halves that buffer at the cost of ~3 significant digits in the sum). g_t is
    the gradient the optimizer sees (accumulated over micro-batches and averaged across processes,
    before clipping). A window of one step has variance 0. With track_variance=False only
    grad_norm is computed (no parameter-sized buffer) and grad_variance is NaN.

    Sharded parameters (FSDP): each process holds a shard of every gradient, so every sum above
    is a sum over shards. Each process keeps the per-step squared norms and ||mean_g||^2 of its
    shard; at the window's end ``reduce`` (a sum across processes, e.g. an all-reduce) adds them
    up, once per window — then every process has the full-model figures. Unsharded (DDP or one
    process), ``reduce`` is the identity.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        track_variance: bool = True,
        buffer_dtype: torch.dtype = torch.float32,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.params = list(params)
        self.track_variance = track_variance
        self.reduce = reduce or _no_reduce
        self.sums = [torch.zeros_like(local(p), dtype=buffer_dtype) for p in self.params] if track_variance else []
        dev = local(self.params[0]).device if self.params else torch.device("cpu")
        self.device = dev
        self.step_sq: list[torch.Tensor] = []  # this shard's ||g_t||^2 per step (float64, on device)

    @property
    def count(self) -> int:
        return len(self.step_sq)

    @torch.no_grad()
    def update(self) -> None:
        """Record the current .grad of every parameter as one step (missing grads count as 0)."""
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = local(p.grad).float()
            sq += g.pow(2).sum().to(sq.device, torch.float64)
            if self.track_variance:
                self.sums[i].add_(g.to(self.sums[i].dtype))
        self.step_sq.append(sq)  # kept on the device: no host sync per step

    @torch.no_grad()
    def window(self) -> dict[str, float]:
        """Metrics of the steps since the last call, then reset. NaN when no step was recorded."""
        t = self.count
        if t == 0:
            return {"grad_variance": math.nan, "grad_norm": math.nan}
        mean_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        if self.track_variance:
            for s in self.sums:
                mean_sq += (s.double() / t).pow(2).sum()
        # one reduction per window: every step's squared norm and ||mean_g||^2, summed over shards
        totals = self.reduce(torch.stack(self.step_sq + [mean_sq])).double().cpu()
        step_sq, mean_sq_total = totals[:-1], float(totals[-1])
        out = {"grad_norm": float(step_sq.sqrt().sum()) / t, "grad_variance": math.nan}
        if self.track_variance:
            # the two terms can differ by rounding only when the true variance is ~0
            out["grad_variance"] = max(float(step_sq.sum()) / t - mean_sq_total, 0.0)
            for s in self.sums:
                s.zero_()
        self.step_sq.clear()
        return out


class DistanceFromInit:
    """L2 norm of (theta - theta_0) over the trainable parameters.

    For a LoRA model the trainable parameters are the adapter matrices (A, B), so this is the
    parameter-space distance the adapter has moved (not the norm of the merged weight delta B·A).
    The initial values are copied to CPU once, so GPU memory is not spent on them. Sharded
    parameters: each process copies and compares its shard; ``reduce`` sums the squared
    distances across processes.
    """

    def __init__(
        self, params: Sequence[torch.nn.Parameter], reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ):
        self.params = list(params)
        self.reduce = reduce or _no_reduce
        self.init = [local(p).detach().to("cpu", torch.float32, copy=True) for p in self.params]

    @torch.no_grad()
    def distance(self) -> float:
        sq = torch.zeros((), dtype=torch.float64)
        for p, p0 in zip(self.params, self.init):
            sq += (local(p).detach().to("cpu", torch.float32) - p0).pow(2).sum(dtype=torch.float64)
        dev = local(self.params[0]).device if self.params else torch.device("cpu")
        return math.sqrt(float(self.reduce(sq.to(dev)).cpu()))
