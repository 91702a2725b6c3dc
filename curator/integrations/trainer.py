"""`PreMemCallback`: the dynamics ledger of a training set, measured inside a Trainer / SFTTrainer run.

At each save (or each epoch end) the callback hands the live model to curator's
`DynamicsTracker` — the same measurement `curate premem`, the curation loop and `curate measure`
use, lazy by default — writes the ledger so far (Parquet, atomically) and reports dataset
PreMemAcc, train accuracy and fraction memorized through the trainer's own ``log`` (so MLflow,
W&B and every other ``report_to`` backend receive them at the trainer's global step).

The measurement is curator's `CheckpointMeasurer`: under DDP every process samples and scores
its share of the examples (every copy of a prompt on one rank, per-sample seeds unchanged) and
receives the others', so every process holds the one-process ledger; only the main process
writes it. Models whose parameters are sharded across processes (FSDP, DeepSpeed ZeRO-3) cannot
be sampled in place: there the callback measures each checkpoint from the directory the trainer
just saved (``source="checkpoint"``, chosen automatically; every process loads it whole and
samples its share), exactly as `curate measure` would.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.loaders import load_examples
from curator.dynamics.metrics import summary
from curator.dynamics.settings import MeasureSettings
from curator.dynamics.tracker import check_premem_settings
from curator.errors import ConfigError
from curator.measure import CheckpointLoader, checkpoint_metrics, read_checkpoint
from curator.measurement import CheckpointMeasurer
from curator.sampling.providers import HFProvider, SamplerProvider
from curator.sampling.sharded import without_autocast
from curator.training.sft import CheckpointInfo

__all__ = ["REPORTED", "PreMemCallback", "planned_checkpoints", "without_autocast"]

log = logging.getLogger(__name__)

REPORTED = ("premem_acc", "train_accuracy", "fraction_memorized")


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def planned_checkpoints(args: Any, state: Any, on: str) -> int | None:
    """How many times a run will call the callback's measurement, known at ``on_train_begin``.

    ``on="epoch"``: one per epoch (``state.num_train_epochs``, which already accounts for
    ``max_steps``). ``on="save"``: one per epoch for ``save_strategy="epoch"``; for ``"steps"``,
    one every ``save_steps`` plus the save Trainer makes at the last step when that is not a
    multiple. None when unknowable (``"best"``).
    """
    if on == "epoch":
        return int(state.num_train_epochs)
    strategy = _strategy(args.save_strategy)
    if strategy == "epoch":
        return int(state.num_train_epochs)
    if strategy == "steps":
        every = int(state.save_steps or args.save_steps)
        return state.max_steps // every + (1 if state.max_steps % every else 0)
    return None


def _sharded(args: Any) -> bool:
    """Whether the trainer shards parameters across processes (FSDP or DeepSpeed ZeRO-3)."""
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return True
    plugin = getattr(args, "hf_deepspeed_config", None)
    try:
        return bool(plugin is not None and plugin.is_zero3())
    except AttributeError:
        return False


class PreMemCallback(TrainerCallback):
    """Measure PreMemAcc of ``examples`` inside a transformers `Trainer` or TRL `SFTTrainer` run.

    Args:
        examples: the training examples to follow (curator `Example`s, or any `load_examples`
            source); usually the training set itself, or a sample of it.
        fmt: how examples become (prompt, target) text — the same text the trainer trains on
            (`curator.export.trl_dataset(examples, fmt)` builds such a dataset).
        grader: answer grader (name or object).
        measure: the tracker's `MeasureSettings` (samples per cell ``k``, sampling ``params``,
            threshold ``p``, ``lazy`` / ``defer`` tracking); default ``MeasureSettings()``.
        on: ``"save"`` (measure each checkpoint the trainer saves) or ``"epoch"``.
        n_checkpoints: the number of measurements the run will make; lazy tracking needs it to
            make the last one exact. Default: computed from the training arguments at train begin.
        out: where the ledger goes (default ``<output_dir>/ledger.parquet``); rewritten after
            each measurement.
        source: ``"live"`` (the model in memory), ``"checkpoint"`` (the directory just saved; needs
            ``on="save"``) or ``"auto"`` (checkpoint for FSDP / ZeRO-3, else live).
        provider: the `SamplerProvider` that hands out samplers (curator.sampling.providers);
            default: an `HFProvider` over the trainer's tokenizer, 32 prompts per batch
            (``HFProvider(tok, batch_size=16)`` for another batch size, ``FactoryProvider(f, tok)``
            for a sampler of your own).
        progress: sampling progress bars (default: unless the trainer's ``disable_tqdm``).

    Report through the trainer's own logging by attaching it: ``PreMemCallback(...).attach(trainer)``
    (a callback is not told which trainer runs it). Unattached, the metrics still go into
    ``state.log_history`` (and so into ``trainer_state.json``), but no ``report_to`` backend sees them.
    """

    def __init__(
        self,
        examples: Sequence[Example] | str | os.PathLike,
        *,
        measure: MeasureSettings | None = None,
        fmt: PromptFormat | None = None,
        grader: Any = "auto",
        on: str = "save",
        n_checkpoints: int | None = None,
        out: str | os.PathLike | None = None,
        source: str = "auto",
        provider: SamplerProvider | None = None,
        progress: bool | None = None,
    ):
        if isinstance(examples, (str, os.PathLike)):
            examples = load_examples(examples)
        self.measure_settings = measure or MeasureSettings()
        problems = check_premem_settings(len(examples), self.measure_settings.k, self.measure_settings.p)
        if on not in ("save", "epoch"):
            problems.append(f"on must be 'save' or 'epoch', got {on!r}")
        if source not in ("auto", "live", "checkpoint"):
            problems.append(f"source must be 'auto', 'live' or 'checkpoint', got {source!r}")
        if source == "checkpoint" and on != "save":
            problems.append("source='checkpoint' reads the directories the trainer saves, so it needs on='save'")
        if self.measure_settings.defer and source == "checkpoint":
            problems.append("defer=True re-samples earlier weights of the live model; use source='live'")
        if problems:
            raise ConfigError(problems)
        self.examples = list(examples)
        self.fmt = fmt or PromptFormat()
        self.grader = get_grader(grader) if isinstance(grader, str) else grader
        self.on, self.n_checkpoints, self.out = on, n_checkpoints, out
        self.source, self.provider = source, provider
        self.progress = progress
        self.trainer: Any = None
        self.measurer: Any = None  # the CheckpointMeasurer of the current train() call
        self.ledger: Any = None  # the latest ledger (all checkpoints so far)
        self.measure_seconds = 0.0
        self._index = 0
        self._loader: Any = None
        self._warned_unattached = False
        self._disabled: str | None = None

    def attach(self, trainer: Any) -> PreMemCallback:
        """Add this callback to ``trainer`` and report through its ``log``; returns self."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    # -- trainer events ---------------------------------------------------------------------------
    @property
    def tracker(self) -> Any:
        """The `DynamicsTracker` measuring this run (None before train begins, or when disabled)."""
        return None if self.measurer is None else self.measurer.tracker

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.measurer = None
        if state.global_step > 0:
            # the tracker's running maxima of the earlier checkpoints are gone with the old process
            self._disabled = (
                f"PreMemCallback: the run resumed at step {state.global_step}; a ledger cannot "
                "continue across a restart, so this run is not measured. Run `curate measure "
                f"{args.output_dir}` over all its checkpoints when it ends"
            )
            log.warning(self._disabled)
            return
        tok = getattr(processing_class, "tokenizer", processing_class)
        if self.on == "save" and _strategy(args.save_strategy) == "no":
            raise ConfigError(
                "PreMemCallback(on='save') but the trainer never saves (save_strategy='no'); "
                "set save_strategy='epoch' or 'steps', or use on='epoch'"
            )
        n = self.n_checkpoints or planned_checkpoints(args, state, self.on)
        if n is None and self.measure_settings.lazy:
            raise ConfigError(
                f"PreMemCallback cannot tell how many checkpoints save_strategy="
                f"{_strategy(args.save_strategy)!r} will make; pass n_checkpoints=, or lazy=False"
            )
        self._index, self._disabled = 0, None  # a callback object may serve several train() calls
        if self.source == "auto":
            self.source = "checkpoint" if _sharded(args) and self.on == "save" else "live"
        self.measurer = CheckpointMeasurer(
            self.examples,
            self.fmt,
            self.grader,
            self.measure_settings,
            self._provider(tok),
            n,
            tokenizer=tok,
            progress=not args.disable_tqdm if self.progress is None else self.progress,
        )
        self.n_checkpoints = n
        self._tokenizer = tok
        self._params_sharded = _sharded(args)

    def _provider(self, tokenizer: Any) -> SamplerProvider:
        return self.provider if self.provider is not None else HFProvider(tokenizer)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.on == "save":
            self._measure(args, state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.on == "epoch":
            self._measure(args, state, model)

    def on_train_end(self, args, state, control, **kwargs):
        if self._disabled or self.measurer is None:
            return
        if self._index != self.n_checkpoints:
            log.warning(
                "PreMemCallback measured %d checkpoints but expected %s; the last one's PreMemAcc is "
                "exact only if it was counted as final (pass n_checkpoints=)",
                self._index,
                self.n_checkpoints,
            )

    # -- measuring --------------------------------------------------------------------------------
    def _measure(self, args, state, model) -> None:
        import time

        if self._disabled or self.measurer is None:
            return
        t0 = time.perf_counter()
        self._index += 1
        if self.source == "checkpoint":
            loaded = self._load_saved(args, state, model)
            model_for = loaded.model
            self.measurer.provider = self._provider(loaded.tokenizer)
        else:
            model_for = model
            if self._tokenizer is None:
                raise ConfigError("PreMemCallback needs the tokenizer: give the trainer processing_class=tokenizer")
        info = CheckpointInfo(
            self._index,
            int(state.global_step),
            float(state.epoch or 0.0),
            checkpoint_metrics(state.log_history, int(state.global_step)),
            # the live model of an FSDP / ZeRO-3 run: each forward pass gathers the parameters, so
            # every process runs every one (a loaded checkpoint is whole on every process)
            params_sharded=self.source == "live" and self._params_sharded,
        )
        self.measurer.measure(model_for, info)
        self.ledger = self.measurer.ledger(source="PreMemCallback", output_dir=str(args.output_dir))
        self.measurer.write_ledger(self.ledger_path(args), self.ledger)
        self.measure_seconds += time.perf_counter() - t0
        self._report(state, self._metrics())

    def ledger_path(self, args) -> Path:
        return Path(self.out) if self.out is not None else Path(args.output_dir) / "ledger.parquet"

    def _load_saved(self, args, state, model):
        from accelerate import PartialState

        # every process must see the complete directory before any loads it
        PartialState().wait_for_everyone()
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self._loader is None:
            # the dtype the model trains in (sharded parameters keep it); on this process's device
            param = next(model.parameters())
            device = f"cuda:{param.device.index or 0}" if param.device.type == "cuda" else "cpu"
            self._loader = CheckpointLoader(dtype=param.dtype, device=device)
        return self._loader.load(read_checkpoint(path))

    def _metrics(self) -> dict[str, float]:
        last = summary(self.ledger).iloc[-1]
        values = {
            "premem_acc": last["premem_acc"],
            "train_accuracy": last["train_acc"],
            "fraction_memorized": last["fraction_memorized"],
        }
        # lazy tracking leaves intermediate PreMemAcc within bounds (NaN point value): report what is known
        return {k: float(v) for k, v in values.items() if math.isfinite(float(v))}

    def _report(self, state, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
            return
        state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})
        if not self._warned_unattached:
            self._warned_unattached = True
            log.warning(
                "PreMemCallback is not attached to its trainer, so report_to backends do not get "
                "PreMemAcc; add it with PreMemCallback(...).attach(trainer)"
            )
