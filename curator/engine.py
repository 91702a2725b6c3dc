"""The round engine: the one owner of "copy the base -> finetune -> measure -> evaluate".

`train_and_track` is the unit of work that the active loop (loops/active.py), `curate premem`
(`track_premem`) and `curate sweep` (`run_sweep`) all run:

    model    = fresh_model(base, start)                   # a trainable copy (or the base itself)
    measurer = CheckpointMeasurer(..., provider, n)       # full / lazy / deferred tracking
    finetune(model, ..., on_checkpoint=measure)           # every rank trains (accelerate)
        measure: measurer.measure(model, info, after=after_checkpoint)
                 # provider.sampler(model), split over ranks; after_checkpoint: the caller's work
    test_accuracy = measurer.test_accuracy(model, test)

The sampler's lifecycle belongs to the `SamplerProvider` (curator.sampling.providers), never to
the callers: the hf provider wraps the live model once; the vLLM provider keeps one engine for the
whole run and loads each checkpoint's weights into it. Measuring a checkpoint belongs to the
`CheckpointMeasurer` (curator.measurement): under ``accelerate launch`` with several processes
each rank samples and scores its share and every rank ends with the same ledger and test
accuracy; writing files is the caller's job, on the main process only.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator import distributed
from curator import training as training_lib  # finetune looked up when called, so a test can replace it
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.dynamics.ledger import Ledger
from curator.dynamics.metrics import summary
from curator.dynamics.settings import MeasureSettings, TestEval, eval_sampling
from curator.dynamics.tracker import check_deferred_memory, validate_premem
from curator.errors import ConfigError, DataError
from curator.io import atomic_write_text
from curator.measurement import CheckpointMeasurer, RecordingSampler
from curator.models import apply_lora
from curator.sampling.base import Sampler, SamplingParams
from curator.sampling.providers import HFProvider
from curator.sampling.sharded import sharded

# names other modules import from the engine: the test-time sampling rule, the recording sampler
# and the rank split (each defined beside what it belongs to)
__all__ = [
    "CheckpointMeasurer",
    "MeasureSettings",
    "ModelStart",
    "RecordingSampler",
    "RoundExtras",
    "RoundResult",
    "TestEval",
    "eval_sampling",
    "fresh_model",
    "sharded",
    "track_premem",
    "train_and_track",
]


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
        model = apply_lora(model, lora)
    if init_state is not None:
        # only the trainable weights are carried over, so the check is on those: each one present,
        # nothing unknown (a state from another model or LoRA setting would otherwise load silently)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        unknown = sorted(set(init_state) - {n for n, _ in model.named_parameters()})
        missing = sorted(trainable - set(init_state))
        if unknown or missing:
            raise DataError(
                f"saved trainable weights do not fit this model: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]}); was the run "
                "made with another model or LoRA setting? Start a new output_dir"
            )
        model.load_state_dict(init_state, strict=False)
    return model


@dataclass(frozen=True)
class ModelStart:
    """How a round's trainable model is made from the base model (`fresh_model`).

    Attributes:
        lora: `LoraSettings` to add adapters, or None for full finetuning.
        init_state: trainable weights carried over from an earlier round (continue_training).
        in_place: train the base model itself instead of a deep copy.
        seed: seeds LoRA's initialisation; None: the training seed.
    """

    lora: Any = None
    init_state: dict | None = None
    in_place: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class RoundExtras:
    """A round's optional per-checkpoint work and ledger annotations.

    Attributes:
        after_checkpoint: ``(sampler, info, rows) -> dict | None`` after each checkpoint's
            measurement, with the same sampler; the dict is added to the checkpoint's record.
        record_completions: hand ``after_checkpoint`` a `RecordingSampler` that kept what the
            tracker sampled.
        ledger_meta: extra ledger metadata.
    """

    after_checkpoint: Callable[[Sampler, Any, list[dict]], dict | None] | None = None
    record_completions: bool = False
    ledger_meta: dict | None = None


def train_and_track(
    base: Any,
    examples: Sequence[Example],
    *,
    fmt: PromptFormat,
    grader: Any,
    training: Any,
    provider: Any,
    measure: MeasureSettings | None = None,
    start: ModelStart | None = None,
    test: TestEval | None = None,
    extras: RoundExtras | None = None,
    progress: bool = True,
) -> RoundResult:
    """Finetune a fresh copy of ``base`` on ``examples``, measuring dynamics at every checkpoint.

    Args:
        base: a `LoadedModel` (model, tokenizer, spec).
        fmt, grader: the prompt/target format and the answer grader.
        training: `TrainSettings`.
        provider: the `SamplerProvider` that owns the sampler (see curator.sampling.providers).
        measure: the tracker's settings (`MeasureSettings`; a recipe's
            ``dynamics.measure_settings(stop, seed)``).
        start: how the trained model is made (`ModelStart`).
        test: test accuracy after training (`TestEval`; skipped without test examples).
        extras: per-checkpoint work of the caller and ledger metadata (`RoundExtras`).

    Raises:
        ConfigError / DataError: bad settings, before training starts.
    """
    measure, start, extras = measure or MeasureSettings(), start or ModelStart(), extras or RoundExtras()
    _check_round(measure)
    n_ckpt = training.n_checkpoints(len(examples))
    measurer = CheckpointMeasurer(
        examples,
        fmt,
        grader,
        measure,
        provider,
        n_ckpt,
        tokenizer=base.tokenizer,
        record_completions=extras.record_completions,
        progress=progress,
    )
    model = _round_model(base, start, training, measure.defer, n_ckpt)
    records, result, seconds = _train_measuring(
        model, base.tokenizer, examples, fmt, training, measurer, extras, progress
    )
    train_meta = (
        dataclasses.asdict(training) if dataclasses.is_dataclass(training) and not isinstance(training, type) else {}
    )
    ledger = measurer.ledger(model=str(getattr(base, "spec", "")), train=train_meta, **(extras.ledger_meta or {}))
    return RoundResult(
        model=model,
        ledger=ledger,
        checkpoints=records,
        test_accuracy=measurer.test_accuracy(model, test) if test is not None else float("nan"),
        train_seconds=seconds,
        samples_drawn=measurer.samples_drawn,
        train=result,
    )


def _check_round(measure: MeasureSettings) -> None:
    """Settings a round refuses before any model is copied."""
    if measure.defer and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise ConfigError(
            "dynamics.defer copies and reloads whole parameters, which FSDP shards across "
            "processes; track with lazy (defer: false) under FSDP"
        )


def _round_model(base: Any, start: ModelStart, training: Any, defer: bool, n_ckpt: int) -> Any:
    """The model the round trains (and, for deferred tracking, the check that its copies fit)."""

    seed = training.seed if start.seed is None else start.seed
    model = fresh_model(base, lora=start.lora, init_state=start.init_state, in_place=start.in_place, seed=seed)
    if defer:
        check_deferred_memory(model, n_ckpt)
    return model


def checkpoint_record(info: Any) -> dict[str, Any]:
    """A checkpoint's row of `RoundResult.checkpoints`: where it is and its training metrics."""
    return {
        "checkpoint": int(info.index),
        "step": int(info.step),
        "epoch": float(info.epoch),
        **{
            key: float(v)
            for key, v in (getattr(info, "metrics", None) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        },
    }


def _train_measuring(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    fmt: PromptFormat,
    training: Any,
    measurer: CheckpointMeasurer,
    extras: RoundExtras,
    progress: bool,
) -> tuple[list[dict[str, Any]], Any, float]:
    """`finetune` with the measurer at every checkpoint: (checkpoint records, TrainResult, seconds)."""

    records: list[dict[str, Any]] = []

    def on_checkpoint(m: Any, info: Any) -> None:
        measured = measurer.measure(m, info, after=extras.after_checkpoint)
        records.append({**checkpoint_record(info), **measured.extra})

    t0 = time.time()
    result = training_lib.finetune(
        model, tokenizer, list(examples), fmt, training, on_checkpoint=on_checkpoint, progress=progress
    )
    return records, result, time.time() - t0


def track_premem(
    loaded_model: Any,
    examples: Sequence[Example],
    *,
    fmt: PromptFormat,
    grader: Any,
    train_settings: Any,
    measure: MeasureSettings | None = None,
    provider: Any = None,
    lora: Any = None,
    out_dir: str | os.PathLike | None = None,
    allow_bad_references: bool = False,
    progress: bool = True,
) -> Ledger:
    """Finetune ``loaded_model.model`` in place on ``examples``, tracking dynamics at every checkpoint.

    One round of the round engine (`train_and_track`). Writes ``ledger.parquet`` and
    ``summary.csv`` to ``out_dir`` (if given; on the main process only) and returns the ledger.
    ``measure`` chooses k, sampling, p and the tracking mode (see `DynamicsTracker`). With
    ``lora`` (a `LoraSettings`) adapters are added first and ``loaded_model.model`` becomes the
    peft model. The sampler comes from ``provider`` (a `SamplerProvider`; default: hf over the live
    model). Under ``accelerate launch`` every process trains and measures its share of the
    examples; every process returns the same ledger.

    Raises:
        ConfigError / DataError: before any training, for every bad setting or reference answer.
    """

    measure = measure or MeasureSettings(params=SamplingParams(stop=fmt.stop))
    validate_premem(
        examples,
        grader,
        fmt=fmt,
        train_settings=train_settings,
        k=measure.k,
        p=measure.p,
        allow_bad_references=allow_bad_references,
    )
    result = train_and_track(
        loaded_model,
        list(examples),
        fmt=fmt,
        grader=grader,
        training=train_settings,
        provider=provider or HFProvider(loaded_model.tokenizer),
        measure=measure,
        start=ModelStart(lora=lora, in_place=True),
        progress=progress,
    )
    loaded_model.model = result.model
    ledger = result.ledger
    if out_dir is not None and distributed.is_main_process():
        out = Path(out_dir)
        ledger.to_parquet(out / "ledger.parquet")
        atomic_write_text(out / "summary.csv", summary(ledger).to_csv())
    return ledger
