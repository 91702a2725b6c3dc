"""Supervised finetuning on (prompt, target) pairs with checkpoint callbacks.

The loop is written on `accelerate.Accelerator` (device placement, DDP, mixed precision from the
launcher's config), so the same call runs in one process or under ``accelerate launch`` with
several. Data order is planned from the seed on every process (no sampler state to keep in sync):
each epoch is a seeded permutation, cut into global micro-batches of ``batch_size * processes``
examples, and process r takes every r-th example of each. Because every process knows the whole
plan, each also knows how many target tokens one optimizer step covers globally, so the loss is
the exact mean over all target tokens of the step without extra communication.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from curator.console import progress as progress_bar
from curator.data.example import Example
from curator.data.format import PromptFormat, encode_pair
from curator.distributed import collective_errors, make_accelerator
from curator.errors import ConfigError, DataError
from curator.training.settings import TrainSettings

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that torch's cross_entropy skips (prompt and padding positions)


@dataclass(frozen=True)
class CheckpointInfo:
    """What `on_checkpoint` is told about one checkpoint.

    Attributes:
        index: 1-based checkpoint number.
        step: optimizer steps done so far.
        epoch: fractional epoch (1.0 at the end of the first epoch).
        metrics: ``train_loss``, ``grad_variance``, ``grad_norm``, ``dist_from_init``,
            ``learning_rate`` (see docs/TRAINING.md for definitions); identical on every process.
        path: the saved checkpoint directory, or None when settings.save_checkpoints is false.
        is_main_process / process_index / num_processes: where this callback runs.
        params_sharded: the model's parameters are sharded (FSDP); a forward pass gathers them,
            so every process must run the same forward passes (no sharded sampling).
    """

    index: int
    step: int
    epoch: float
    metrics: dict[str, float]
    path: str | None = None
    is_main_process: bool = True
    process_index: int = 0
    num_processes: int = 1
    params_sharded: bool = False  # FSDP: every process must run the same forward passes


@dataclass
class TrainResult:
    """Summary of a `finetune` call (the model itself is trained in place)."""

    steps: int
    epochs: int
    n_examples: int
    num_processes: int
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # per optimizer step, all processes
    final_metrics: dict[str, float] = field(default_factory=dict)
    n_truncated: int = 0  # examples whose target was cut at max_length
    n_tokens: int = 0  # input tokens processed (all processes, all epochs, padding excluded)
    train_seconds: float = 0.0  # the training loop, excluding checkpoint saving and callbacks
    checkpoint_seconds: float = 0.0  # saving checkpoints and running on_checkpoint

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.train_seconds if self.train_seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        return d


# -- tokenization --------------------------------------------------------------------------------


def build_features(
    tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """(input_ids, labels) per pair, unshifted (HF convention: labels[j] is the token at j).

    Prompt positions are labelled IGNORE_INDEX, so the loss covers target tokens only — all of
    them, including the first, which the last prompt token predicts. Over-long pairs are cut at
    the right. Returns the features and how many targets were cut.

    Raises DataError when a target is empty or a prompt leaves no room for any target token.
    """
    feats, n_cut, bad_empty, bad_long = [], 0, [], []
    for i, (prompt, target) in enumerate(zip(prompts, targets)):
        p, t = encode_pair(tokenizer, prompt, target)
        if not t:
            bad_empty.append(i)
            continue
        if len(p) >= max_length:
            bad_long.append(i)
            continue
        if len(p) + len(t) > max_length:
            t = t[: max_length - len(p)]
            n_cut += 1
        feats.append((p + t, [IGNORE_INDEX] * len(p) + t))
    problems = []
    if bad_empty:
        problems.append(
            f"{len(bad_empty)} example(s) have an empty target after formatting "
            f"(first at position {bad_empty[0]}); check the target template and solutions"
        )
    if bad_long:
        problems.append(
            f"{len(bad_long)} example(s) have prompts of max_length={max_length} tokens or "
            f"more (first at position {bad_long[0]}); raise training.max_length"
        )
    if problems:
        raise DataError("; ".join(problems))
    return feats, n_cut


def collate(features: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input_ids, attention_mask, labels (padding labelled IGNORE_INDEX)."""
    import torch

    width = max(len(ids) for ids, _ in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, (x, y) in enumerate(features):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, mask, labels


def target_nll_sum(logits, labels):
    """Sum of next-token cross-entropy over labelled positions (logits at j predict labels at j+1)."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def epoch_plan(n_examples: int, settings: TrainSettings, epoch: int, num_processes: int = 1) -> list[list[list[int]]]:
    """The epoch's optimizer steps, each a list of global micro-batches of example indices.

    The order is a permutation seeded by (seed, epoch): the same on every process and every run.
    """
    import numpy as np

    order = np.random.default_rng([settings.seed, epoch]).permutation(n_examples).tolist()
    width = settings.batch_size * num_processes
    micro = [order[i : i + width] for i in range(0, n_examples, width)]
    return [micro[i : i + settings.grad_accum] for i in range(0, len(micro), settings.grad_accum)]


# -- the loop ------------------------------------------------------------------------------------


def _set_activation_checkpointing(model: Any, on: bool) -> None:
    # transformers >= 5 renamed gradient_checkpointing_* to activation_checkpointing_*
    if on:
        # non-reentrant checkpointing also works when the inputs need no grad (frozen embeddings, LoRA)
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()


def params_sharded(acc: Any) -> bool:
    """Whether this launch shards parameters across processes (accelerate's FSDP)."""
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def _check_accelerator(acc: Any) -> None:
    from accelerate.utils import DistributedType

    if acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ConfigError(
            f"finetune supports one process, DDP and FSDP; this launch uses "
            f"{acc.distributed_type.value}, "
            "whose parameter handling its gradient statistics do not cover; launch with an FSDP "
            "config (accelerate launch --use_fsdp) instead"
        )
    if params_sharded(acc):
        plugin = acc.state.fsdp_plugin
        if getattr(plugin, "fsdp_version", 1) == 1 and not getattr(plugin, "use_orig_params", True):
            raise ConfigError(
                "FSDP version 1 with use_orig_params=false flattens parameters, so finetune cannot "
                "tell trainable from frozen weights; set fsdp_use_orig_params: true (or "
                "fsdp_version: 2) in the accelerate config"
            )
    if acc.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"accelerate is set to accumulate {acc.gradient_accumulation_steps} steps; finetune "
            "accumulates itself: set training.grad_accum instead and launch without "
            "--gradient_accumulation_steps"
        )


def finetune(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    fmt: PromptFormat | None,
    settings: TrainSettings,
    on_checkpoint: Callable[[Any, CheckpointInfo], None] | None = None,
    progress: bool = True,
    accelerator: Any = None,
) -> TrainResult:
    """Finetune `model` in place on `examples`, loss on target tokens only.

    Works on a plain transformers causal LM (full finetuning) or a peft model (only parameters with
    requires_grad are optimized). Under ``accelerate launch`` with several processes it trains with
    DDP; `on_checkpoint(model, info)` is then called on every process, with the unwrapped model
    and identical metrics, so that measurement can be sharded across processes; use
    ``info.is_main_process`` for work that must happen once. The model is in eval mode during the
    callback and back in train mode after it.

    Args:
        fmt: prompt/target templates; None means the paper's defaults (``PromptFormat()``).
        accelerator: an existing `accelerate.Accelerator` to reuse; a new one by default.

    Raises:
        ConfigError: empty training set, a schedule with no checkpoint, no trainable parameters.
        DataError: empty targets, prompts longer than max_length.
    """
    examples = list(examples)
    if not examples:
        raise ConfigError("the training set is empty; give finetune at least one example")
    from accelerate.utils import set_seed

    acc = accelerator or make_accelerator()
    _check_accelerator(acc)
    # errors that need no model work come first
    feats, n_cut = _sft_features(examples, fmt or PromptFormat(), tokenizer, settings, acc.num_processes)
    trainable_named = trainable_parameters(model, "finetune")
    set_seed(settings.seed)
    was_training = model.training
    undo_training_settings = _set_for_training(model, settings)
    steps = _SFTSteps(acc, model, trainable_named, feats, tokenizer, settings)
    steps.result.n_truncated = n_cut
    try:
        show = progress and acc.is_local_main_process
        run_steps(steps, settings, steps.base, on_checkpoint, train_module=steps.ddp_model, desc="finetune", show=show)
    finally:
        undo_training_settings(steps.base)
        # drop accelerate's mixed-precision forward wrapper, if any, from the caller's model
        acc.unwrap_model(steps.ddp_model, keep_fp32_wrapper=False)
        steps.base.train(was_training)
    return steps.result


def _sft_features(
    examples: list[Example], fmt: PromptFormat, tokenizer: Any, settings: TrainSettings, world: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """The schedule check and the tokenized pairs (`build_features`), before any model work."""
    settings.checkpoint_schedule(len(examples), world)
    prompts, targets = fmt.pairs(examples, tokenizer)
    feats, n_cut = build_features(tokenizer, prompts, targets, settings.max_length)
    if n_cut:
        log.warning("%d of %d targets were cut at max_length=%d tokens", n_cut, len(examples), settings.max_length)
    return feats, n_cut


def _set_for_training(model: Any, settings: TrainSettings) -> Callable[[Any], None]:
    """Activation checkpointing on (when asked for) and the KV cache off; returns the undo."""
    if settings.gradient_checkpointing:
        _set_activation_checkpointing(model, True)
    config = getattr(model, "config", None)
    old_use_cache = getattr(config, "use_cache", None)
    if config is not None and old_use_cache is not None:
        config.use_cache = False  # no KV cache is needed for teacher-forced training

    def undo(base: Any) -> None:
        if settings.gradient_checkpointing:
            _set_activation_checkpointing(base, False)
        if config is not None and old_use_cache is not None:
            config.use_cache = old_use_cache

    return undo


class _SFTSteps:
    """`finetune`'s part of the step loop (`StepFunctions`): the DDP-aware optimizer step, the
    window's loss and gradient statistics, and checkpoint directories."""

    def __init__(
        self,
        acc: Any,
        model: Any,
        trainable_named: list[tuple[str, Any]],
        feats: list[tuple[list[int], list[int]]],
        tokenizer: Any,
        settings: TrainSettings,
    ):
        import torch

        from curator.training.stats import DistanceFromInit, GradStats  # imports torch

        self.acc, self.feats, self.tokenizer, self.settings = acc, feats, tokenizer, settings
        self.world, self.rank, n = acc.num_processes, acc.process_index, len(feats)
        self.n_target = [sum(1 for y in labels if y != IGNORE_INDEX) for _, labels in feats]
        self.pad_id = pad_token_id(tokenizer)
        self.ddp_model, self.optimizer = acc.prepare(model, adamw([p for _, p in trainable_named], settings))
        self.base = acc.unwrap_model(self.ddp_model)
        self.trainable = [p for p in self.base.parameters() if p.requires_grad]
        total_steps = settings.total_steps(n, self.world)
        # not passed through acc.prepare: AcceleratedScheduler would step once per process
        self.scheduler = lr_scheduler(self.optimizer, settings, total_steps)
        self.sharded = params_sharded(acc)
        # FSDP: each process holds a shard of every parameter; the statistics sum over shards
        reduce = (lambda t: acc.reduce(t, reduction="sum")) if self.sharded else None
        self.grad_stats = GradStats(
            self.trainable,
            track_variance=settings.track_grad_variance,
            buffer_dtype=getattr(torch, settings.grad_variance_dtype),
            reduce=reduce,
        )
        self.dist = DistanceFromInit(self.trainable, reduce=reduce)
        self.result = TrainResult(steps=total_steps, epochs=settings.epochs, n_examples=n, num_processes=self.world)
        self.window_sums: list[Any] = []  # this process's summed target NLL per step of the current window
        self.window_tokens: list[int] = []  # global target tokens per step (known on every process)

    def train_step(self, batches: list[list[int]], epoch: int, step: int) -> Callable[[], dict[str, Any]]:
        with collective_errors(f"training step {step}"):  # a dead rank: one line, not a hang
            local_sum, local_tokens = self._optimizer_step(batches)
        return lambda: {"loss": f"{float(local_sum) / max(local_tokens, 1):.4f}", "epoch": epoch + 1}

    def _optimizer_step(self, batches: list[list[int]]) -> tuple[Any, int]:
        """One optimizer step over the step's global micro-batches; returns this process's summed
        target NLL and target-token count (for the progress bar)."""
        import torch

        acc, world, n_target = self.acc, self.world, self.n_target
        step_tokens = sum(n_target[i] for mb in batches for i in mb)
        local_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        local_tokens = 0
        for j, mb in enumerate(batches):
            mine, weight = mb[self.rank :: world], 1.0
            if not mine:
                # a short last batch can leave this process nothing: run one example with zero
                # weight so that DDP's gradient all-reduce still happens on every process
                mine, weight = mb[:1], 0.0
            ids, mask, labels = (t.to(acc.device) for t in collate([self.feats[i] for i in mine], self.pad_id))
            last = j == len(batches) - 1
            with contextlib.nullcontext() if last else acc.no_sync(self.ddp_model):
                nll = target_nll_sum(self.ddp_model(input_ids=ids, attention_mask=mask).logits, labels)
                # DDP averages gradients over processes: scaling by world makes the result the
                # gradient of (target NLL summed over the global step) / (its target tokens)
                acc.backward(nll * (weight * world / step_tokens))
            local_sum += weight * nll.detach().double()
            local_tokens += int(weight) * sum(n_target[i] for i in mine)
        if acc.scaler is not None:
            acc.unscale_gradients()  # fp16: statistics and clipping need the true gradient
        self.grad_stats.update()
        if self.settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window_sums.append(local_sum)
        self.window_tokens.append(step_tokens)
        self.result.n_tokens += sum(len(self.feats[i][0]) for mb in batches for i in mb)
        return local_sum, local_tokens

    def window_open(self) -> bool:
        return bool(self.window_tokens)

    def close_window(self) -> dict[str, float]:
        """Reduce the window's losses across processes; gradient and distance statistics."""
        import torch

        acc = self.acc
        if self.window_sums:
            sums = torch.stack(self.window_sums)
        else:
            sums = torch.zeros(0, dtype=torch.float64, device=acc.device)
        sums = acc.reduce(sums, reduction="sum").double().cpu()
        toks = torch.tensor(self.window_tokens, dtype=torch.float64)
        self.result.step_losses.extend((sums / toks).tolist())
        metrics = {"train_loss": float(sums.sum() / toks.sum()) if self.window_tokens else math.nan}
        metrics.update(self.grad_stats.window())
        metrics["dist_from_init"] = self.dist.distance()
        metrics["learning_rate"] = float(self.scheduler.get_last_lr()[0])
        self.window_sums.clear()
        self.window_tokens.clear()
        return metrics

    def checkpoint_info(self, index: int, step: int, epoch: float, metrics: dict[str, float]) -> CheckpointInfo:
        s = self.settings
        return CheckpointInfo(
            index=index,
            step=step,
            epoch=epoch,
            metrics=metrics,
            # TrainSettings refuses save_checkpoints without an output_dir
            path=os.path.join(s.output_dir, f"checkpoint-{step}") if s.save_checkpoints and s.output_dir else None,
            is_main_process=self.acc.is_main_process,
            process_index=self.rank,
            num_processes=self.world,
            params_sharded=self.sharded,
        )

    def save(self, info: CheckpointInfo) -> None:
        if info.path is None:
            return
        acc = self.acc
        # FSDP: gathering the full state dict is a collective every process joins
        full = acc.get_state_dict(self.ddp_model) if self.sharded else None
        if acc.is_main_process:
            self.base.save_pretrained(info.path, **({"state_dict": full} if full is not None else {}))
            self.tokenizer.save_pretrained(info.path)
            with open(os.path.join(info.path, "curator_checkpoint.json"), "w") as f:
                json.dump(
                    {k: v for k, v in asdict(info).items() if k not in ("is_main_process", "process_index")},
                    f,
                    indent=1,
                )
        acc.wait_for_everyone()  # every process's callback sees a complete directory


# -- the step loop shared with DPO ---------------------------------------------------------------


def trainable_parameters(model: Any, caller: str) -> list[tuple[str, Any]]:
    """(name, parameter) for every parameter that requires grad; ConfigError when there is none."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError(
            "the model has no trainable parameters (all requires_grad=False); apply LoRA "
            f"or unfreeze the model before {caller}"
        )
    return named


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def adamw(params: Sequence[Any], settings: TrainSettings) -> Any:
    """torch's AdamW at the settings' learning rate, decaying matrices, not biases or norm weights."""
    import torch

    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.learning_rate)


def lr_scheduler(optimizer: Any, settings: TrainSettings, total_steps: int) -> Any:
    """The settings' schedule with its warmup (curator's "constant" warms up too)."""
    from transformers import get_scheduler

    return get_scheduler(
        {"constant": "constant_with_warmup"}.get(settings.lr_scheduler, settings.lr_scheduler),
        optimizer,
        num_warmup_steps=math.ceil(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


class StepFunctions(Protocol):
    """A trainer's part of `run_steps`: its optimizer step and what it reports per checkpoint."""

    result: TrainResult

    def train_step(self, batches: list[list[int]], epoch: int, step: int) -> Callable[[], dict[str, Any]]:
        """Optimizer step ``step`` (1-based) over its global micro-batches; returns what the
        progress bar shows, computed only when the bar is shown."""
        ...

    def window_open(self) -> bool:
        """Whether steps ran since the last checkpoint."""
        ...

    def close_window(self) -> dict[str, float]:
        """The metrics of the steps since the last checkpoint; the next window starts empty."""
        ...

    def checkpoint_info(self, index: int, step: int, epoch: float, metrics: dict[str, float]) -> CheckpointInfo: ...

    def save(self, info: CheckpointInfo) -> None:
        """Write the checkpoint's directory, when ``info.path`` names one."""
        ...


def run_steps(
    steps: StepFunctions,
    settings: TrainSettings,
    model: Any,
    on_checkpoint: Callable[[Any, CheckpointInfo], None] | None,
    *,
    train_module: Any = None,
    desc: str,
    show: bool,
) -> None:
    """The step loop SFT and DPO share: every epoch's seed-planned steps (`epoch_plan`), one
    progress bar, a checkpoint at each scheduled step, and the split of time between training and
    checkpoints. Fills ``steps.result`` (checkpoints, seconds, final metrics).

    Args:
        model: what `on_checkpoint` receives (the unwrapped model), in eval mode during the call.
        train_module: what is put in train mode at the start (a DDP wrapper); default ``model``.
    """
    result = steps.result
    n, world = result.n_examples, result.num_processes
    checkpoint_at = {s: i + 1 for i, s in enumerate(settings.checkpoint_schedule(n, world))}
    bar = progress_bar(total=result.steps, desc=desc, unit="step", disable=not show)
    try:
        (model if train_module is None else train_module).train()
        step = 0
        t0 = time.perf_counter()
        for epoch in range(settings.epochs):
            for batches in epoch_plan(n, settings, epoch, world):
                step += 1
                shown = steps.train_step(batches, epoch, step)
                if not bar.disable:
                    bar.set_postfix(**shown())
                bar.update(1)
                if step in checkpoint_at:
                    _checkpoint(steps, checkpoint_at[step], step, settings, model, on_checkpoint)
        result.train_seconds = time.perf_counter() - t0 - result.checkpoint_seconds
        # steps after the last checkpoint (checkpoint_every not dividing the total) make a last window
        result.final_metrics = steps.close_window() if steps.window_open() else dict(result.checkpoints[-1].metrics)
    finally:
        bar.close()


def _checkpoint(
    steps: StepFunctions,
    index: int,
    step: int,
    settings: TrainSettings,
    model: Any,
    on_checkpoint: Callable[[Any, CheckpointInfo], None] | None,
) -> None:
    t_start = time.perf_counter()
    result = steps.result
    metrics = steps.close_window()
    info = steps.checkpoint_info(index, step, settings.epoch_at(step, result.n_examples, result.num_processes), metrics)
    steps.save(info)
    result.checkpoints.append(info)
    if on_checkpoint is not None:
        model.eval()
        on_checkpoint(model, info)
        model.train()
    result.checkpoint_seconds += time.perf_counter() - t_start
