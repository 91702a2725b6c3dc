"""The round engine: the one owner of "copy the base -> finetune -> measure -> evaluate".

`train_and_track` is the unit of work that the active loop (loops/active.py), `curate premem`
(`track_premem`) and `curate sweep` (`run_sweep`) all run:

    model   = fresh_model(base, lora, init_state)        # a trainable copy (or the base itself)
    tracker = DynamicsTracker(...)                        # full / lazy / deferred
    finetune(model, ..., on_checkpoint=measure)           # every rank trains (accelerate)
        measure: sampler = provider.sampler(model)        # hf: the live model; vllm: synced engine
                 tracker.measure(sampler, info, model=, sampler_factory=provider.sampler)
                 after_checkpoint(sampler, info, rows)    # caller's extra per-checkpoint work
    test_accuracy = evaluate_accuracy(provider.sampler(model), test, ...)

The sampler's lifecycle belongs to the `SamplerProvider` (curator.sampling.providers), never to
the callers: the hf provider wraps the live model once; the vLLM provider keeps one engine for the
whole run and loads each checkpoint's weights into it. Under ``accelerate launch`` with several
processes every sampler is wrapped in a `ShardedSampler`, so each rank samples and scores its
share and every rank ends with the same ledger and test accuracy; writing files is the caller's
job, on the main process only.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.errors import ConfigError
from curator.sampling.base import Sampler, SamplingParams


@dataclass
class RoundResult:
    """What one round of training and measurement produced.

    Attributes:
        model: the trained model (live, in memory).
        ledger: the learning-dynamics ledger of the training set over all checkpoints.
        checkpoints: one record per checkpoint: ``checkpoint``, ``step``, ``epoch``, the training
            metrics (``train_loss``, ``grad_variance``, ``dist_from_init`` ...) and whatever
            ``after_checkpoint`` returned.
        test_accuracy: accuracy on the test set after training (NaN without a test set).
        train_seconds: wall time of training and measurement.
        samples_drawn: completions the tracker sampled.
        train: the `TrainResult` of `finetune`.
    """

    model: Any
    ledger: Ledger
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    test_accuracy: float = float("nan")
    train_seconds: float = 0.0
    samples_drawn: int = 0
    train: Any = None


def fresh_model(
    base: Any, *, lora: Any = None, init_state: dict | None = None, seed: int = 0, in_place: bool = False
) -> Any:
    """A trainable model from ``base`` (a `LoadedModel`): a deep copy unless ``in_place``, with
    LoRA adapters when ``lora`` is set, and ``init_state`` (trainable weights carried over) loaded."""
    import torch

    torch.manual_seed(seed)  # LoRA's random init
    model = base.model if in_place else copy.deepcopy(base.model)
    if lora is not None and not hasattr(model, "peft_config"):
        from curator.models import apply_lora

        model = apply_lora(model, lora)
    if init_state is not None:
        # only the trainable weights are carried over, so the check is on those: each one present,
        # nothing unknown (a state from another model or LoRA setting would otherwise load silently)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        unknown = sorted(set(init_state) - {n for n, _ in model.named_parameters()})
        missing = sorted(trainable - set(init_state))
        if unknown or missing:
            from curator.errors import DataError

            raise DataError(
                f"saved trainable weights do not fit this model: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]}); was the run "
                "made with another model or LoRA setting? Start a new output_dir"
            )
        model.load_state_dict(init_state, strict=False)
    return model


def sharded(sampler: Sampler, info: Any = None) -> Sampler:
    """``sampler`` split across the launch's ranks when there are several (else itself)."""
    from curator import distributed

    world = int(getattr(info, "num_processes", 0) or distributed.world_size())
    if world <= 1 or getattr(info, "params_sharded", False):
        # FSDP: a forward pass all-gathers the parameters, so every rank must run the same
        # forward passes; every rank then samples every prompt (identical results)
        return sampler
    from curator.sampling.sharded import ShardedSampler

    rank = int(getattr(info, "process_index", distributed.rank()))
    # a vLLM engine split by tensor parallelism serves a group of ranks: shard over the groups
    tp = int(getattr(sampler, "tensor_parallel_size", 1) or 1)
    return ShardedSampler(
        sampler, rank // tp, world // tp, lambda obj: distributed.gather_objects(obj, "gathering sampled results")[::tp]
    )


class RecordingSampler:
    """Passes calls through to a Sampler and keeps every completion by prompt (e.g. for ATC)."""

    def __init__(self, inner: Sampler):
        self.inner = inner
        self.accepts_counts = bool(getattr(inner, "accepts_counts", False))
        self.model = getattr(inner, "model", None)
        self.completions: dict[str, list[str]] = {}

    def generate(self, prompts, n, params):
        outs = self.inner.generate(prompts, n, params)
        for p, o in zip(prompts, outs):
            self.completions.setdefault(p, []).extend(o)
        return outs

    def target_logprobs(self, prompts, targets):
        return self.inner.target_logprobs(prompts, targets)


def train_and_track(
    base: Any,
    examples: Sequence[Example],
    *,
    fmt: PromptFormat,
    grader: Any,
    training: Any,
    provider: Any,
    k: int = 5,
    params: SamplingParams | None = None,
    p: float = 1.105,
    lazy: bool = True,
    defer: bool = False,
    exact_every_checkpoint: bool = False,
    lora: Any = None,
    init_state: dict | None = None,
    in_place: bool = False,
    seed: int | None = None,
    test: Sequence[Example] = (),
    eval_params: SamplingParams | None = None,
    eval_samples: int = 1,
    after_checkpoint: Callable[[Sampler, Any, list[dict]], dict | None] | None = None,
    record_completions: bool = False,
    ledger_meta: dict | None = None,
    progress: bool = True,
) -> RoundResult:
    """Finetune a fresh copy of ``base`` on ``examples``, measuring dynamics at every checkpoint.

    Args:
        base: a `LoadedModel` (model, tokenizer, spec).
        fmt, grader: the prompt/target format and the answer grader.
        training: `TrainSettings`.
        provider: the `SamplerProvider` that owns the sampler (see curator.sampling.providers).
        k, params, p, lazy, defer, exact_every_checkpoint: the `DynamicsTracker` settings.
        lora, init_state, in_place, seed: how the trained model is made (`fresh_model`; ``seed``
            seeds LoRA's initialisation, default ``training.seed``).
        test, eval_params, eval_samples: test accuracy after training (skipped without a test set).
        after_checkpoint: ``(sampler, info, rows) -> dict | None`` after each checkpoint's
            measurement, with the same sampler; the dict is added to the checkpoint's record.
        record_completions: hand ``after_checkpoint`` a `RecordingSampler` that kept what the
            tracker sampled.
        ledger_meta: extra ledger metadata.

    Raises:
        ConfigError / DataError: bad settings, before training starts.
    """
    from curator.dynamics.tracker import DynamicsTracker, check_deferred_memory
    from curator.training import finetune

    if defer and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ConfigError(
            "dynamics.defer copies and reloads whole parameters, which FSDP shards across "
            "processes; track with lazy (defer: false) under FSDP"
        )
    tok = base.tokenizer
    n_ckpt = training.n_checkpoints(len(examples))
    tracker = DynamicsTracker(
        examples,
        fmt,
        grader,
        k=k,
        params=params or SamplingParams(stop=fmt.stop),
        p=p,
        lazy=lazy,
        defer=defer,
        n_checkpoints=n_ckpt,
        exact_every_checkpoint=exact_every_checkpoint,
        tokenizer=tok,
        progress=progress,
    )
    model = fresh_model(
        base, lora=lora, init_state=init_state, in_place=in_place, seed=training.seed if seed is None else seed
    )
    if defer:
        check_deferred_memory(model, n_ckpt)
    records: list[dict[str, Any]] = []
    last_info: list[Any] = [None]  # how the launch is laid out (processes, FSDP), for the evaluation

    def on_checkpoint(m: Any, info: Any) -> None:
        last_info[0] = info

        def sampler_for(state: Any) -> Sampler:
            s = sharded(provider.sampler(state), info)
            return RecordingSampler(s) if record_completions else s

        sampler = sampler_for(m)
        rows = tracker.measure(sampler, info, model=m, sampler_factory=sampler_for)
        record = {
            "checkpoint": int(info.index),
            "step": int(info.step),
            "epoch": float(info.epoch),
            **{
                key: float(v)
                for key, v in (getattr(info, "metrics", None) or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
        if after_checkpoint is not None:
            record.update(after_checkpoint(sampler, info, rows) or {})
        records.append(record)
        if hasattr(provider, "sleep"):  # give the GPU back to training until the next checkpoint
            provider.sleep()

    t0 = time.time()
    result = finetune(model, tok, list(examples), fmt, training, on_checkpoint=on_checkpoint, progress=progress)
    seconds = time.time() - t0
    train_meta = (
        dataclasses.asdict(training) if dataclasses.is_dataclass(training) and not isinstance(training, type) else {}
    )
    ledger = tracker.ledger(**{"model": str(getattr(base, "spec", "")), "train": train_meta, **(ledger_meta or {})})
    test_acc = float("nan")
    if test:
        from curator.evaluation import evaluate_accuracy

        ep = eval_params or SamplingParams(temperature=0.0, top_p=1.0, stop=fmt.stop)
        test_acc = evaluate_accuracy(
            sharded(provider.sampler(model), last_info[0]), test, fmt, grader, ep, n=eval_samples, tokenizer=tok
        ).accuracy
    return RoundResult(
        model=model,
        ledger=ledger,
        checkpoints=records,
        test_accuracy=test_acc,
        train_seconds=seconds,
        samples_drawn=tracker.samples_drawn,
        train=result,
    )


def eval_sampling(
    temperature: float, max_new_tokens: int, stop: Sequence[str], seed: int, top_p: float = 0.95
) -> SamplingParams:
    """Test-time sampling parameters: greedy (top_p 1) at temperature 0, else nucleus ``top_p``."""
    return SamplingParams(
        temperature=temperature,
        top_p=1.0 if temperature == 0 else top_p,
        max_new_tokens=max_new_tokens,
        stop=tuple(stop),
        seed=seed,
    )
