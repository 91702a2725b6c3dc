"""Direct preference optimisation (Rafailov et al. 2023) with checkpoint callbacks.

    loss = -log σ(β [(log π(y+|x) - log π_ref(y+|x)) - (log π(y-|x) - log π_ref(y-|x))])

with log π(y|x) the *summed* log-probability of the response's target tokens. The reference is the
model as it is when `dpo_finetune` is called (after SFT, in the usual recipe): its log-probs of
every pair are computed once, up front, in eval mode, so no second copy of the model is kept.

Why a loss of our own rather than TRL's DPOTrainer (argued in docs/PROBES.md): the probes must see
exactly the tokens SFT trained on (`encode_pair`: prompt and target tokenized separately, no EOS
appended; TRL 1.16 tokenizes prompt+response jointly and appends EOS), they must run at exact
optimizer steps, and the loop reuses the SFT layer's pieces — the same features, data order
(`epoch_plan`), checkpoint schedule (`TrainSettings`) and `CheckpointInfo` callbacks.

Single process (no accelerate/DDP): the preference stage of a probe study is small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from curator.errors import ConfigError, DataError
from curator.training.settings import TrainSettings
from curator.training.sft import (
    IGNORE_INDEX,
    CheckpointInfo,
    TrainResult,
    build_features,
    collate,
    epoch_plan,
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
    import torch
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    n = len(pairs)
    schedule = settings.checkpoint_schedule(n, 1)
    prompts = [p.prompt for p in pairs]
    feats_c, cut_c = build_features(tokenizer, prompts, [p.chosen for p in pairs], settings.max_length)
    feats_r, cut_r = build_features(tokenizer, prompts, [p.rejected for p in pairs], settings.max_length)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(
            "the model has no trainable parameters (all requires_grad=False); apply LoRA "
            "or unfreeze the model before dpo_finetune"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    was_training = model.training

    def logps(idx: list[int]):
        """Summed log-probs of chosen and rejected for pairs `idx`, in one forward pass."""
        ids, mask, labels = (t.to(device) for t in collate([feats_c[i] for i in idx] + [feats_r[i] for i in idx], pad))
        lp = sequence_logprobs(model(input_ids=ids, attention_mask=mask).logits, labels)
        return lp[: len(idx)], lp[len(idx) :]

    # the reference: the model as given, in eval mode (no dropout), computed once
    model.eval()
    ref_c = torch.zeros(n, dtype=torch.float64)
    ref_r = torch.zeros(n, dtype=torch.float64)
    with torch.inference_mode():
        for s in range(0, n, settings.batch_size):
            idx = list(range(s, min(n, s + settings.batch_size)))
            c, r = logps(idx)
            ref_c[idx], ref_r[idx] = c.double().cpu(), r.double().cpu()

    torch.manual_seed(settings.seed)
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.learning_rate)
    total = settings.total_steps(n, 1)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(settings.lr_scheduler, settings.lr_scheduler),
        optimizer,
        num_warmup_steps=math.ceil(settings.warmup_ratio * total),
        num_training_steps=total,
    )
    result = TrainResult(steps=total, epochs=settings.epochs, n_examples=n, num_processes=1, n_truncated=cut_c + cut_r)
    checkpoint_at = {s: i + 1 for i, s in enumerate(schedule)}
    window: list[tuple[float, float, float, float]] = []  # per pair: loss, acc, r_c, r_r

    def metrics() -> dict[str, float]:
        cols = list(zip(*window)) if window else [[math.nan]] * 4
        out = {
            k: float(sum(c) / len(c))
            for k, c in zip(("train_loss", "reward_accuracy", "reward_chosen", "reward_rejected"), cols)
        }
        out["reward_margin"] = out["reward_chosen"] - out["reward_rejected"]
        out["learning_rate"] = float(scheduler.get_last_lr()[0])
        window.clear()
        return out

    bar = tqdm(total=total, desc="dpo", unit="step", disable=not progress)
    try:
        model.train()
        step = 0
        t0 = time.perf_counter()
        for epoch in range(settings.epochs):
            for step_batches in epoch_plan(n, settings, epoch, 1):
                n_step = sum(len(mb) for mb in step_batches)
                for mb in step_batches:
                    pc, pr = logps(mb)
                    loss, r_c, r_r = dpo_loss(
                        pc.double(), pr.double(), ref_c[mb].to(device), ref_r[mb].to(device), beta
                    )
                    (loss.sum() / n_step).backward()
                    window.extend(zip(loss.tolist(), (r_c > r_r).double().tolist(), r_c.tolist(), r_r.tolist()))
                    result.n_tokens += sum(len(feats_c[i][0]) + len(feats_r[i][0]) for i in mb)
                if settings.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.step_losses.append(float(sum(w[0] for w in window[-n_step:]) / n_step))
                bar.set_postfix(loss=f"{result.step_losses[-1]:.4f}")
                bar.update(1)
                if step in checkpoint_at:
                    t_cb = time.perf_counter()
                    info = CheckpointInfo(
                        index=checkpoint_at[step], step=step, epoch=settings.epoch_at(step, n, 1), metrics=metrics()
                    )
                    result.checkpoints.append(info)
                    if on_checkpoint is not None:
                        model.eval()
                        on_checkpoint(model, info)
                        model.train()
                    result.checkpoint_seconds += time.perf_counter() - t_cb
        result.train_seconds = time.perf_counter() - t0 - result.checkpoint_seconds
        result.final_metrics = metrics() if window else dict(result.checkpoints[-1].metrics)
    finally:
        bar.close()
        model.train(was_training)
    return result
