"""A ledger from checkpoints any trainer saved (`curate measure`).

Takes ``checkpoint-*`` directories written by transformers' Trainer, TRL, curator's own
`finetune` (``save_checkpoints``), or anything else that writes ``save_pretrained`` directories:
full models, or peft adapters (``adapter_config.json``) applied to a base model. Each checkpoint
is measured with the same `DynamicsTracker` the training loop and `PreMemCallback` use, in step
order, so the ledger is the one those would have written at the same weights.

Step, epoch and checkpoint-level signals come from the directory's ``trainer_state.json``
(Trainer/TRL) or ``curator_checkpoint.json`` (curator); a directory with neither gives its step
from its ``checkpoint-N`` name and an unknown (NaN) epoch, and a plain model directory (the base
model, saved before training) is step 0, epoch 0 — or the step ``--step`` gives.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator import distributed
from curator.console import progress as progress_bar
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.dynamics.settings import MeasureSettings
from curator.dynamics.tracker import check_premem_settings
from curator.errors import ConfigError, CuratorError, DataError, require
from curator.measurement import CheckpointMeasurer
from curator.models import load_model
from curator.models.loading import LoadedModel, resolve_dtype
from curator.sampling.providers import make_provider
from curator.training.sft import CheckpointInfo

__all__ = [
    "Checkpoint",
    "CheckpointInfo",  # the one checkpoint record (curator.training), re-exported for this module's callers
    "CheckpointLoader",
    "check_ledger_matches",
    "checkpoint_metrics",
    "find_checkpoints",
    "measure_checkpoints",
    "read_checkpoint",
]

log = logging.getLogger(__name__)

_CKPT_NAME = re.compile(r"^checkpoint-(\d+)$")
# Trainer log keys -> ledger signal columns (checkpoint-level, copied into every row)
_LOG_KEYS = {"loss": "train_loss", "grad_norm": "grad_norm", "learning_rate": "learning_rate"}


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint: where it is, when it was taken, what it holds."""

    path: Path
    step: int
    epoch: float
    metrics: dict[str, float] = field(default_factory=dict)
    adapter: bool = False  # a peft adapter (adapter_config.json) rather than a full model


def checkpoint_metrics(log_history: Iterable[dict[str, Any]], step: int) -> dict[str, float]:
    """Checkpoint-level signals from a Trainer's ``log_history``: the last logged training loss,
    gradient norm and learning rate at or before ``step``.

    `PreMemCallback` (live ``state.log_history``) and `curate measure` (the checkpoint's
    ``trainer_state.json``) both call this, so their ledgers carry the same signal columns.
    """
    last: dict[str, Any] | None = None
    for entry in log_history:
        if "loss" in entry and int(entry.get("step", -1)) <= step:
            last = entry
    if last is None:
        return {}
    return {
        col: float(last[key])
        for key, col in _LOG_KEYS.items()
        if isinstance(last.get(key), (int, float)) and not isinstance(last.get(key), bool)
    }


def read_checkpoint(path: str | os.PathLike, step: int | None = None) -> Checkpoint:
    """A `Checkpoint` from a saved directory (raises DataError if it holds no model).

    ``step`` overrides the step the directory records. A model directory that records no step
    (no trainer state, no ``checkpoint-<step>`` name: e.g. the base model before training) is
    step 0 at epoch 0 — the first point of every curve.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"{path}: no such checkpoint directory; give checkpoint directories or a run "
            "directory holding checkpoint-* subdirectories"
        )
    adapter = (path / "adapter_config.json").is_file()
    if not adapter and not (path / "config.json").is_file():
        raise DataError(
            f"{path}: neither a saved model (config.json) nor a peft adapter "
            "(adapter_config.json); point at the checkpoint-* directories a trainer saved"
        )
    ckpt = _recorded_checkpoint(path, adapter)
    if step is not None and step != ckpt.step:
        epoch = 0.0 if step == 0 else float("nan")
        return Checkpoint(path, int(step), epoch, {} if step == 0 else ckpt.metrics, adapter)
    return ckpt


def _recorded_checkpoint(path: Path, adapter: bool) -> Checkpoint:
    """What the directory itself says about its step, epoch and training signals."""
    name_step = _CKPT_NAME.match(path.name)
    if (path / "trainer_state.json").is_file():
        state = json.loads((path / "trainer_state.json").read_text())
        step = int(state.get("global_step", name_step.group(1) if name_step else 0))
        epoch = state.get("epoch")
        return Checkpoint(
            path,
            step,
            float("nan") if epoch is None else float(epoch),
            checkpoint_metrics(state.get("log_history", []), step),
            adapter,
        )
    if (path / "curator_checkpoint.json").is_file():
        info = json.loads((path / "curator_checkpoint.json").read_text())
        metrics = {
            k: float(v)
            for k, v in (info.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return Checkpoint(path, int(info["step"]), float(info["epoch"]), metrics, adapter)
    if name_step is None:  # a model saved outside training (the base model): before any step
        return Checkpoint(path, 0, 0.0, {}, adapter)
    return Checkpoint(path, int(name_step.group(1)), float("nan"), {}, adapter)


def find_checkpoints(paths: Sequence[str | os.PathLike], step: int | None = None) -> list[Checkpoint]:
    """Checkpoints in step order from checkpoint directories and/or run directories.

    A path holding ``checkpoint-*`` subdirectories stands for all of them; any other path must be
    a checkpoint itself. ``step`` gives the step of a single model directory (``--step 0``: the
    untrained model). Raises DataError for a directory without checkpoints or two checkpoints
    at the same step.
    """
    if not paths:
        raise ConfigError("give at least one checkpoint directory or a run directory with checkpoint-* subdirectories")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"--step must be an integer >= 0, got {step!r}")
        if len(paths) != 1 or any(_CKPT_NAME.match(d.name) for d in _subdirs(Path(paths[0]))):
            raise ConfigError(
                "--step gives the step of one model directory; give exactly one checkpoint or model "
                "directory with it (a run directory's checkpoints record their own steps)"
            )
        return [read_checkpoint(paths[0], step=step)]
    found: list[Checkpoint] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DataError(
                f"{p}: no such directory; give checkpoint directories or a run directory "
                "holding checkpoint-* subdirectories"
            )
        subs = sorted(d for d in _subdirs(p) if _CKPT_NAME.match(d.name))
        if subs:
            found.extend(read_checkpoint(d) for d in subs)
        elif (p / "config.json").is_file() or (p / "adapter_config.json").is_file():
            found.append(read_checkpoint(p))
        else:
            raise DataError(
                f"{p}: holds no checkpoint-* subdirectories and is not a saved model itself; "
                "point at the trainer's output_dir (with save_strategy other than 'no') "
                "or at checkpoint directories"
            )
    found.sort(key=lambda c: c.step)
    steps = [c.step for c in found]
    dup = sorted({s for s in steps if steps.count(s) > 1})
    if dup:
        where = ", ".join(str(c.path) for c in found if c.step == dup[0])
        raise DataError(f"two checkpoints at step {dup[0]} ({where}); give each run's checkpoints once")
    if any(c.adapter for c in found) and not all(c.adapter for c in found):
        raise DataError("some checkpoints are peft adapters and some full models; measure one run at a time")
    return found


def _subdirs(p: Path) -> list[Path]:
    return [d for d in p.iterdir() if d.is_dir()] if p.is_dir() else []


class CheckpointLoader:
    """Loads checkpoints one after another; for adapters the base model is loaded once and only
    the adapter weights are swapped in (a checkpoint costs an adapter's size, not a model's)."""

    def __init__(self, base: str | None = None, *, dtype: Any = None, device: str | None = None):
        self.base_spec, self.dtype, self.device = base, dtype, device
        self._peft = None  # the PeftModel, once the first adapter is loaded
        self._peft_config: dict | None = None
        self._base: Any = None

    def _base_model(self, ckpt: Checkpoint):
        if self._base is None:
            spec = self.base_spec
            if spec is None:
                cfg = json.loads((ckpt.path / "adapter_config.json").read_text())
                spec = cfg.get("base_model_name_or_path")
                if not spec:
                    raise ConfigError(
                        f"{ckpt.path}: the adapter does not record its base model; pass --base "
                        "(the model the adapters were trained on)"
                    )
            self._base = load_model(spec, dtype=self.dtype, device=self.device)
        return self._base

    def load(self, ckpt: Checkpoint):
        """The checkpoint as a `LoadedModel` (for adapters: the shared base with this adapter).

        Raises DataError naming the file when a weights file is damaged, or holds Python objects
        besides tensors (pickles are loaded with ``weights_only``: such a file is refused, and no
        code in it runs).
        """
        import pickle

        try:
            return self._load(ckpt)
        except pickle.UnpicklingError as e:
            raise DataError(
                f"{weights_file(ckpt.path)}: refused to load: it holds Python objects, not only tensors "
                f"({_first_line(e)}), and loading those could run code; re-save the checkpoint as "
                "safetensors (save_pretrained does by default)"
            ) from None
        except Exception as e:
            if type(e).__name__ != "SafetensorError":  # safetensors' own type; importing it needs torch
                raise
            raise DataError(
                f"{weights_file(ckpt.path)}: the weights file is damaged or not safetensors "
                f"({_first_line(e)}); re-save or re-copy the checkpoint"
            ) from None

    def _load(self, ckpt: Checkpoint):
        if not ckpt.adapter:
            if not _has_tokenizer(ckpt.path) and not self.base_spec:
                raise ConfigError(
                    f"{ckpt.path}: the checkpoint holds no tokenizer (the trainer was not given "
                    "one); pass --base, the model whose tokenizer it uses"
                )
            if not _has_tokenizer(ckpt.path):
                # Trainer saves the tokenizer only when it was given one; take the base model's
                from transformers import AutoModelForCausalLM

                tok = self._base_model(ckpt).tokenizer
                dev = self._base_model(ckpt).device
                model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=resolve_dtype(self.dtype, dev))
                return LoadedModel(model.to(dev).eval(), tok, str(ckpt.path), dev, model.dtype)
            return load_model(ckpt.path, dtype=self.dtype, device=self.device)
        return self._load_adapter(ckpt)

    def _load_adapter(self, ckpt: Checkpoint):
        import dataclasses

        require("peft", "train", "Measuring peft adapter checkpoints")
        from peft import PeftModel, set_peft_model_state_dict
        from peft.utils import load_peft_weights

        base = self._base_model(ckpt)
        config = json.loads((ckpt.path / "adapter_config.json").read_text())
        recorded = config.get("base_model_name_or_path")
        if self.base_spec and recorded and Path(str(recorded)).name != Path(str(self.base_spec)).name:
            log.warning(
                "%s: adapters were trained on %r, measuring them on --base %r", ckpt.path, recorded, self.base_spec
            )
        shape_keys = ("r", "target_modules", "lora_alpha", "peft_type")
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(base.model, str(ckpt.path)).eval()
                self._peft_config = {k: config.get(k) for k in shape_keys}
            else:
                if {k: config.get(k) for k in shape_keys} != self._peft_config:
                    raise CuratorError(
                        f"{ckpt.path}: its adapter settings differ from the earlier checkpoints'; "
                        "measure one run's checkpoints at a time"
                    )
                result = set_peft_model_state_dict(self._peft, load_peft_weights(str(ckpt.path), device="cpu"))
                if getattr(result, "unexpected_keys", None):
                    raise RuntimeError(f"unexpected adapter weights {result.unexpected_keys[:3]}")
        except CuratorError:
            raise
        except (RuntimeError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CuratorError(
                f"{ckpt.path}: the adapter does not fit base model {base.spec!r} ({first}); "
                "pass --base the model these adapters were trained on"
            ) from None
        return dataclasses.replace(base, model=self._peft)


_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def weights_file(path: Path) -> Path:
    """The weights file of a checkpoint directory (the first shard of a sharded one), for messages."""
    for name in _WEIGHTS_FILES:
        if (path / name).is_file():
            return path / name
    shards = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return shards[0] if shards else path


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _has_tokenizer(path: Path) -> bool:
    return any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def measure_checkpoints(
    checkpoints: Sequence[str | os.PathLike | Checkpoint],
    examples: Sequence[Example],
    *,
    measure: MeasureSettings | None = None,
    fmt: PromptFormat | None = None,
    grader: Any = "auto",
    loader: CheckpointLoader | None = None,
    backend: str | Callable[[Any], Any] = "hf",
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
):
    """The dynamics ledger of ``examples`` over saved checkpoints (see the module docstring).

    Args:
        checkpoints: checkpoint directories and/or run directories with ``checkpoint-*``
            subdirectories, or `Checkpoint`s (`find_checkpoints`; ``step=`` there gives a plain
            model directory its step).
        measure: the tracker's `MeasureSettings` (samples per cell, sampling, threshold, lazy);
            default ``MeasureSettings()``.
        loader: how checkpoints load (`CheckpointLoader`: the base model of peft adapters, or the
            tokenizer's source for full checkpoints saved without one; dtype; device). Under a
            launch with several processes on a GPU machine, a loader naming no device puts each
            rank on its own GPU.
        backend: ``hf`` or ``vllm`` (any registered sampler backend; one sampler provider serves
            every checkpoint, so vLLM builds one engine and loads each checkpoint's weights into
            it), or ``f(loaded_model) -> Sampler``.
        batch_size: prompts per sampler batch (``hf``); keep it equal to the training-time
            measurement's to reproduce its ledger bit for bit.
        out: write the ledger there (Parquet, atomically; the main process of a launch only).

    Under ``accelerate launch`` every process loads each checkpoint and samples its share of the
    examples (`CheckpointMeasurer`); every process returns the one-process ledger.

    Returns:
        the `Ledger` (checkpoint indices 1..M in step order; meta ``source="curate measure"``).

    Raises:
        DataError / ConfigError: no checkpoints, unreadable checkpoints, bad settings, adapters that
            do not fit the base model — all before anything is written.
    """
    settings = measure or MeasureSettings()
    problems = check_premem_settings(len(examples), settings.k, settings.p)
    if problems:  # before any checkpoint loads
        raise ConfigError(problems)
    fmt = fmt or PromptFormat()
    grader = get_grader(grader) if isinstance(grader, str) else grader
    ckpts = _as_checkpoints(checkpoints)
    distributed.init_launch()  # under accelerate launch: the process group the ranks share work over
    loader = loader or CheckpointLoader()
    loader.device = _launch_device(loader.device)
    measurer = _measure_each(
        ckpts, loader, _ProviderChoice(backend, batch_size), list(examples), fmt, grader, settings, progress
    )
    ledger = measurer.ledger(
        source="curate measure", checkpoints=[str(c.path) for c in ckpts], model=str(loader.base_spec or ckpts[-1].path)
    )
    if out is not None:
        measurer.write_ledger(out, ledger)
    return ledger


def _as_checkpoints(checkpoints: Sequence[str | os.PathLike | Checkpoint]) -> list[Checkpoint]:
    records = [c for c in checkpoints if isinstance(c, Checkpoint)]
    paths = [c for c in checkpoints if not isinstance(c, Checkpoint)]
    if records and paths:
        raise ConfigError("give checkpoint paths or Checkpoint records (find_checkpoints), not a mix")
    return sorted(records, key=lambda c: c.step) if records else find_checkpoints(paths)


def _measure_each(
    ckpts: list[Checkpoint],
    loader: CheckpointLoader,
    choice: _ProviderChoice,
    examples: list[Example],
    fmt: PromptFormat,
    grader: Any,
    settings: MeasureSettings,
    progress: bool,
) -> CheckpointMeasurer:
    """Load and measure each checkpoint in step order; returns the measurer holding the ledger."""
    measurer: CheckpointMeasurer | None = None
    bar = None
    if progress and distributed.is_main_process():
        bar = progress_bar(total=len(ckpts), desc="measure", unit="checkpoint")
    try:
        for index, ckpt in enumerate(ckpts, 1):
            loaded = choice.loaded = loader.load(ckpt)
            if measurer is None:  # the first checkpoint: its tokenizer (chat-template prompts), its weights (vLLM)
                measurer = CheckpointMeasurer(
                    examples,
                    fmt,
                    grader,
                    settings,
                    choice.provider(loaded, lora=ckpt.adapter),
                    len(ckpts),
                    tokenizer=loaded.tokenizer,
                    progress=progress and distributed.is_main_process(),
                )
            info = CheckpointInfo(index=index, step=ckpt.step, epoch=ckpt.epoch, metrics=ckpt.metrics)
            measurer.measure(loaded.model, info)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if measurer is not None:
            measurer.provider.close()
    assert measurer is not None  # find_checkpoints refuses a directory without checkpoints
    return measurer


class _ProviderChoice:
    """The sampler provider of `measure_checkpoints`, built from the first checkpoint loaded: a
    backend's (`make_provider`, the engine's own), or ``factory(loaded)`` over the checkpoint
    loaded last (a `LoadedModel` whose model is the one being measured)."""

    def __init__(self, backend: str | Callable[[Any], Any], batch_size: int):
        self.backend, self.batch_size = backend, batch_size
        self.loaded: Any = None

    def provider(self, first: LoadedModel, *, lora: bool) -> Any:
        if isinstance(self.backend, str):
            return make_provider(self.backend, first, batch_size=self.batch_size, lora=lora)
        return self

    def sampler(self, model: Any) -> Any:
        import dataclasses

        assert callable(self.backend)  # `provider` hands out self only for a factory
        loaded = self.loaded if self.loaded.model is model else dataclasses.replace(self.loaded, model=model)
        return self.backend(loaded)

    def close(self) -> None:
        self.loaded = None


def _launch_device(device: str | None) -> str | None:
    """Under a launch with several processes on a GPU machine, each rank measures on its own GPU."""
    if device is not None or distributed.world_size() <= 1:
        return device
    import torch  # only under a launch, which has torch loaded already

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', distributed.rank())) % torch.cuda.device_count()}"


def check_ledger_matches(ledger: Any, examples: Sequence[Example], where: str) -> None:
    """Raise DataError unless every ledger example id is among ``examples`` (and vice versa)."""
    ids = set(ledger.example_ids)
    have = {e.id for e in examples}
    missing, extra = sorted(ids - have), sorted(have - ids)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ledger example(s) are not among the examples (e.g. {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} example(s) have no ledger rows (e.g. {extra[0]!r})")
        raise DataError(
            f"{where}: the ledger does not match the examples ({'; '.join(parts)}); measure "
            "the ledger on these examples, or give the examples it was measured on"
        )
