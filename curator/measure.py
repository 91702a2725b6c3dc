"""A ledger from checkpoints any trainer saved (`curate measure`).

Takes ``checkpoint-*`` directories written by transformers' Trainer, TRL, curator's own
`finetune` (``save_checkpoints``), or anything else that writes ``save_pretrained`` directories:
full models, or peft adapters (``adapter_config.json``) applied to a base model. Each checkpoint
is measured with the same `DynamicsTracker` the training loop and `PreMemCallback` use, in step
order, so the ledger is the one those would have written at the same weights.

Step, epoch and checkpoint-level signals come from the directory's ``trainer_state.json``
(Trainer/TRL) or ``curator_checkpoint.json`` (curator); a directory with neither gives its step
from its ``checkpoint-N`` name and an unknown (NaN) epoch.
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

from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.errors import ConfigError, CuratorError, DataError

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


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A `Checkpoint` from a saved directory (raises DataError if it holds no model)."""
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
    if name_step is None:
        raise DataError(
            f"{path}: no trainer_state.json or curator_checkpoint.json and the name is not "
            "checkpoint-<step>, so its training step is unknown; rename it checkpoint-<step>"
        )
    return Checkpoint(path, int(name_step.group(1)), float("nan"), {}, adapter)


def find_checkpoints(paths: Sequence[str | os.PathLike]) -> list[Checkpoint]:
    """Checkpoints in step order from checkpoint directories and/or run directories.

    A path holding ``checkpoint-*`` subdirectories stands for all of them; any other path must be
    a checkpoint itself. Raises DataError for a directory without checkpoints or two checkpoints
    at the same step.
    """
    if not paths:
        raise ConfigError("give at least one checkpoint directory or a run directory with checkpoint-* subdirectories")
    found: list[Checkpoint] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise DataError(
                f"{p}: no such directory; give checkpoint directories or a run directory "
                "holding checkpoint-* subdirectories"
            )
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _CKPT_NAME.match(d.name))
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
            from curator.models import load_model

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
        """The checkpoint as a `LoadedModel` (for adapters: the shared base with this adapter)."""
        if not ckpt.adapter:
            from curator.models import load_model
            from curator.models.loading import LoadedModel

            if not _has_tokenizer(ckpt.path) and not self.base_spec:
                raise ConfigError(
                    f"{ckpt.path}: the checkpoint holds no tokenizer (the trainer was not given "
                    "one); pass --base, the model whose tokenizer it uses"
                )
            if not _has_tokenizer(ckpt.path):
                # Trainer saves the tokenizer only when it was given one; take the base model's
                from transformers import AutoModelForCausalLM

                from curator.models.loading import resolve_dtype

                tok = self._base_model(ckpt).tokenizer
                dev = self._base_model(ckpt).device
                model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=resolve_dtype(self.dtype, dev))
                return LoadedModel(model.to(dev).eval(), tok, str(ckpt.path), dev, model.dtype)
            return load_model(ckpt.path, dtype=self.dtype, device=self.device)
        return self._load_adapter(ckpt)

    def _load_adapter(self, ckpt: Checkpoint):
        import dataclasses

        from curator.errors import require

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


def _has_tokenizer(path: Path) -> bool:
    return any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def measure_checkpoints(
    paths: Sequence[str | os.PathLike],
    examples: Sequence[Example],
    *,
    base: str | None = None,
    fmt: PromptFormat | None = None,
    grader: Any = "auto",
    k: int = 5,
    params: Any = None,
    p: float = 1.105,
    lazy: bool = True,
    backend: str = "hf",
    batch_size: int = 32,
    dtype: Any = None,
    device: str | None = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    sampler_factory: Callable[[Any], Any] | None = None,
):
    """The dynamics ledger of ``examples`` over saved checkpoints (see the module docstring).

    Args:
        paths: checkpoint directories and/or run directories with ``checkpoint-*`` subdirectories.
        base: the base model for peft adapter checkpoints (default: the one the adapter records);
            for full checkpoints saved without a tokenizer, where to take the tokenizer from.
        backend: ``hf`` or ``vllm`` (any registered sampler backend).
        batch_size: prompts per sampler batch (``hf``); keep it equal to the training-time
            measurement's to reproduce its ledger bit for bit.
        out: write the ledger there (Parquet, atomically).
        sampler_factory: ``f(loaded_model) -> Sampler``, overriding ``backend``.

    Returns:
        the `Ledger` (checkpoint indices 1..M in step order; meta ``source="curate measure"``).

    Raises:
        DataError / ConfigError: no checkpoints, unreadable checkpoints, bad settings, adapters that
            do not fit the base model — all before anything is written.
    """
    from curator.data.grading import get_grader
    from curator.dynamics.tracker import DynamicsTracker, check_premem_settings
    from curator.sampling import make_sampler
    from curator.sampling.base import SamplingParams

    problems = check_premem_settings(len(examples), k, p)
    if problems:  # before any checkpoint loads
        raise ConfigError(problems)
    fmt = fmt or PromptFormat()
    grader = get_grader(grader) if isinstance(grader, str) else grader
    ckpts = find_checkpoints(paths)
    loader = CheckpointLoader(base, dtype=dtype, device=device)
    if sampler_factory is None:

        def sampler_factory(loaded):
            kw = {"batch_size": batch_size} if backend == "hf" else {}
            return make_sampler(backend, loaded, **kw)

    tracker: DynamicsTracker | None = None
    bar = None
    if progress:
        from curator.console import progress as progress_bar

        bar = progress_bar(total=len(ckpts), desc="measure", unit="checkpoint")
    try:
        for index, ckpt in enumerate(ckpts, 1):
            loaded = loader.load(ckpt)
            if tracker is None:  # the tokenizer is needed for chat-template prompts
                tracker = DynamicsTracker(
                    list(examples),
                    fmt,
                    grader,
                    k=k,
                    params=params or SamplingParams(stop=fmt.stop),
                    p=p,
                    lazy=lazy,
                    n_checkpoints=len(ckpts),
                    tokenizer=loaded.tokenizer,
                    progress=progress,
                )
            info = CheckpointInfo(index=index, step=ckpt.step, epoch=ckpt.epoch, metrics=ckpt.metrics)
            tracker.measure(sampler_factory(loaded), info)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    assert tracker is not None  # find_checkpoints refuses a directory without checkpoints
    ledger = tracker.ledger(
        source="curate measure", checkpoints=[str(c.path) for c in ckpts], model=str(base or ckpts[-1].path)
    )
    if out is not None:
        ledger.to_parquet(out)
    return ledger


@dataclass(frozen=True)
class CheckpointInfo:
    """What `DynamicsTracker.measure` is told about a checkpoint measured outside `finetune`."""

    index: int
    step: int
    epoch: float
    metrics: dict[str, float]


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
