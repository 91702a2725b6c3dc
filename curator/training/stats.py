"""Cheap training-time statistics: gradient variance across steps and distance from initialisation.

Both exist so that `curate predict` can compare PreMemAcc with the generalization proxies the
PreMemAcc paper compares against (DESIGN §1, claim 1). They cost one float32 copy of the trainable
parameters each (the gradient sum on the parameters' device, the initial values on CPU) and a few
fused reductions per optimizer step — nothing per example.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


class GradStats:
    """Running moments of the optimizer-step gradient g_t (all trainable parameters, flattened).

    Over the T steps of a window (the steps since the previous checkpoint):

        grad_variance = (1/T) * sum_t ||g_t - mean_g||^2  =  (1/T) * sum_t ||g_t||^2 - ||mean_g||^2
        grad_norm     = (1/T) * sum_t ||g_t||

    computed from running sums, so only sum_t g_t is kept. g_t is the gradient the optimizer sees
    (accumulated over micro-batches and averaged across processes, before clipping), so it is the
    same on every process. A window of one step has variance 0. With track_variance=False only
    grad_norm is computed (no parameter-sized buffer) and grad_variance is NaN.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], track_variance: bool = True):
        self.params = list(params)
        self.track_variance = track_variance
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in self.params] if track_variance else []
        dev = self.params[0].device if self.params else torch.device("cpu")
        # float64 scalars kept on the device: no host sync per step
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.norm_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        """Record the current .grad of every parameter as one step (missing grads count as 0)."""
        sq = torch.zeros((), dtype=torch.float64, device=self.sq_sum.device)
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.float()
            sq += g.pow(2).sum().to(sq.device, torch.float64)
            if self.track_variance:
                self.sums[i].add_(g)
        self.sq_sum += sq
        self.norm_sum += sq.sqrt()
        self.count += 1

    @torch.no_grad()
    def window(self) -> dict[str, float]:
        """Metrics of the steps since the last call, then reset. NaN when no step was recorded."""
        t = self.count
        if t == 0:
            return {"grad_variance": math.nan, "grad_norm": math.nan}
        out = {"grad_norm": float(self.norm_sum) / t, "grad_variance": math.nan}
        if self.track_variance:
            mean_sq = sum(float((s.double() / t).pow(2).sum()) for s in self.sums)
            # the two terms can differ by rounding only when the true variance is ~0
            out["grad_variance"] = max(float(self.sq_sum) / t - mean_sq, 0.0)
            for s in self.sums:
                s.zero_()
        self.sq_sum.zero_()
        self.norm_sum.zero_()
        self.count = 0
        return out


class DistanceFromInit:
    """L2 norm of (theta - theta_0) over the trainable parameters.

    For a LoRA model the trainable parameters are the adapter matrices (A, B), so this is the
    parameter-space distance the adapter has moved (not the norm of the merged weight delta B·A).
    The initial values are copied to CPU once, so GPU memory is not spent on them.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.init = [p.detach().to("cpu", torch.float32, copy=True) for p in self.params]

    @torch.no_grad()
    def distance(self) -> float:
        sq = 0.0
        for p, p0 in zip(self.params, self.init):
            sq += float((p.detach().to("cpu", torch.float32) - p0).pow(2).sum(dtype=torch.float64))
        return math.sqrt(sq)
