"""Direct preference optimisation (Rafailov et al. 2023) with checkpoint callbacks.

    loss = -log σ(β [(log π(y+|x) - log π_ref(y+|x)) - (log π(y-|x) - log π_ref(y-|x))])

with log π(y|x) the *summed* log-probability of the response's target tokens. The reference is the
model as it is when `dpo_finetune` is called (after SFT, in the usual recipe): its log-probs of
every pair are computed once, up front, in eval mode, so no second copy of the model is kept.

Why a loss of our own rather than TRL's DPOTrainer (argued in docs/PROBES.md): the probes must see
exactly the tokens SFT trained on (`encode_pair`: prompt and target tokenized separately, no EOS
appended; TRL 1.16 tokenizes prompt+response jointly and appends EOS), they must run at exact
optimizer steps, and the loop is the SFT layer's (`run_steps`) — the same features, data order
(`epoch_plan`), optimizer, checkpoint schedule (`TrainSettings`) and `CheckpointInfo` callbacks.

Single process (no accelerate/DDP): the preference stage of a probe study is small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from curator.errors import ConfigError, DataError
from curator.training.settings import TrainSettings
from curator.training.sft import (
    IGNORE_INDEX,
    CheckpointInfo,
    TrainResult,
    adamw,
    build_features,
    collate,
    lr_scheduler,
    pad_token_id,
    run_steps,
    trainable_parameters,
)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and its chosen / rejected targets, as texts ready for `encode_pair`."""

    prompt: str
    chosen: str
    rejected: str


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Per-pair DPO loss and the implicit rewards β(log π - log π_ref) of chosen and rejected.

    Works on torch tensors (differentiable) of summed response log-probs.
    """
    import torch.nn.functional as F

    r_c = beta * (policy_chosen - ref_chosen)
    r_r = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(r_c - r_r), r_c, r_r


def sequence_logprobs(logits, labels):
    """Summed log-probability of the labelled tokens of each row (logits at j predict labels at j+1)."""
    import torch.nn.functional as F

    lab = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), lab.clamp(min=0), reduction="none")
    return -(nll * (lab != IGNORE_INDEX)).sum(-1)


def check_pairs(pairs: Sequence[Any], where: str = "dpo") -> list[PreferencePair]:
    """The pairs as PreferencePairs; DataError naming the first pair without a chosen or rejected."""
    pairs = list(pairs)
    if not pairs:
        raise ConfigError(f"{where}: no preference pairs; DPO needs (prompt, chosen, rejected) rows")
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, PreferencePair):
            out.append(p)
            continue
        try:
            prompt, chosen, rejected = p
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: pair {i} is not (prompt, chosen, rejected); DPO needs preference pairs, not single responses"
            ) from None
        for name, v in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(v, str) or not v:
                raise DataError(f"{where}: pair {i} has no {name} response; DPO needs both per row")
        out.append(PreferencePair(prompt, chosen, rejected))
    return out


def dpo_finetune(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[PreferencePair | tuple[str, str, str]],
    settings: TrainSettings,
    *,
    beta: float = 0.1,
    on_checkpoint: Callable[[Any, CheckpointInfo], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` in place with the DPO loss; the reference is `model` as given.

    The schedule is `settings`' (epochs, batch_size pairs per micro-batch, grad_accum,
    checkpoint_every, seed-planned data order); each optimizer step's loss is the mean over its
    pairs. `on_checkpoint(model, info)` runs at each checkpoint with the model in eval mode;
    ``info.metrics`` holds ``train_loss`` (mean DPO loss since the last checkpoint),
    ``reward_accuracy``, ``reward_chosen``, ``reward_rejected``, ``reward_margin`` and
    ``learning_rate``.

    Raises:
        ConfigError: no pairs, beta <= 0, no trainable parameters, a schedule with no checkpoint.
        DataError: a pair missing its chosen or rejected response, an empty target.
    """
    pairs = check_pairs(pairs)
    if not (isinstance(beta, (int, float)) and beta > 0):
        raise ConfigError(f"dpo.beta must be > 0, got {beta!r}")
    if settings.save_checkpoints:
        raise ConfigError("dpo_finetune does not save checkpoints; set training.save_checkpoints=false")
    settings.checkpoint_schedule(len(pairs), 1)
    prompts = [p.prompt for p in pairs]
    feats_c, cut_c = build_features(tokenizer, prompts, [p.chosen for p in pairs], settings.max_length)
    feats_r, cut_r = build_features(tokenizer, prompts, [p.rejected for p in pairs], settings.max_length)
    trainable = [p for _, p in trainable_parameters(model, "dpo_finetune")]
    was_training = model.training
    steps = _DPOSteps(model, pad_token_id(tokenizer), feats_c, feats_r, trainable, settings, beta)
    steps.result.n_truncated = cut_c + cut_r
    try:
        run_steps(steps, settings, model, on_checkpoint, desc="dpo", show=progress)
    finally:
        model.train(was_training)
    return steps.result


class _DPOSteps:
    """`dpo_finetune`'s part of the step loop (`StepFunctions`): the reference log-probs, the DPO
    optimizer step and the window's reward statistics. One process."""

    def __init__(
        self,
        model: Any,
        pad_id: int,
        feats_c: list[tuple[list[int], list[int]]],
        feats_r: list[tuple[list[int], list[int]]],
        trainable: list[Any],
        settings: TrainSettings,
        beta: float,
    ):
        import torch

        self.model, self.pad_id, self.feats_c, self.feats_r = model, pad_id, feats_c, feats_r
        self.trainable, self.settings, self.beta = trainable, settings, beta
        self.device = next(model.parameters()).device
        self.ref_c, self.ref_r = self._reference()
        torch.manual_seed(settings.seed)
        self.optimizer = adamw(trainable, settings)
        n = len(feats_c)
        total = settings.total_steps(n, 1)
        self.scheduler = lr_scheduler(self.optimizer, settings, total)
        self.result = TrainResult(steps=total, epochs=settings.epochs, n_examples=n, num_processes=1)
        self.window: list[tuple[float, float, float, float]] = []  # per pair: loss, acc, r_c, r_r

    def _logps(self, idx: list[int]) -> tuple[Any, Any]:
        """Summed log-probs of chosen and rejected for pairs `idx`, in one forward pass."""
        feats = [self.feats_c[i] for i in idx] + [self.feats_r[i] for i in idx]
        ids, mask, labels = (t.to(self.device) for t in collate(feats, self.pad_id))
        lp = sequence_logprobs(self.model(input_ids=ids, attention_mask=mask).logits, labels)
        return lp[: len(idx)], lp[len(idx) :]

    def _reference(self) -> tuple[Any, Any]:
        """The reference: the model as given, in eval mode (no dropout), computed once."""
        import torch

        n, bs = len(self.feats_c), self.settings.batch_size
        self.model.eval()
        ref_c = torch.zeros(n, dtype=torch.float64)
        ref_r = torch.zeros(n, dtype=torch.float64)
        with torch.inference_mode():
            for s in range(0, n, bs):
                idx = list(range(s, min(n, s + bs)))
                c, r = self._logps(idx)
                ref_c[idx], ref_r[idx] = c.double().cpu(), r.double().cpu()
        return ref_c, ref_r

    def train_step(self, batches: list[list[int]], epoch: int, step: int) -> Callable[[], dict[str, Any]]:
        import torch

        n_step = sum(len(mb) for mb in batches)
        for mb in batches:
            pc, pr = self._logps(mb)
            ref_c, ref_r = self.ref_c[mb].to(self.device), self.ref_r[mb].to(self.device)
            loss, r_c, r_r = dpo_loss(pc.double(), pr.double(), ref_c, ref_r, self.beta)
            (loss.sum() / n_step).backward()
            self.window.extend(zip(loss.tolist(), (r_c > r_r).double().tolist(), r_c.tolist(), r_r.tolist()))
            self.result.n_tokens += sum(len(self.feats_c[i][0]) + len(self.feats_r[i][0]) for i in mb)
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_now = float(sum(w[0] for w in self.window[-n_step:]) / n_step)
        self.result.step_losses.append(loss_now)
        return lambda: {"loss": f"{loss_now:.4f}"}

    def window_open(self) -> bool:
        return bool(self.window)

    def close_window(self) -> dict[str, float]:
        cols = list(zip(*self.window)) if self.window else [[math.nan]] * 4
        out = {
            k: float(sum(c) / len(c))
            for k, c in zip(("train_loss", "reward_accuracy", "reward_chosen", "reward_rejected"), cols)
        }
        out["reward_margin"] = out["reward_chosen"] - out["reward_rejected"]
        out["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        self.window.clear()
        return out

    def checkpoint_info(self, index: int, step: int, epoch: float, metrics: dict[str, float]) -> CheckpointInfo:
        return CheckpointInfo(index=index, step=step, epoch=epoch, metrics=metrics)

    def save(self, info: CheckpointInfo) -> None:
        pass  # dpo_finetune refuses save_checkpoints
