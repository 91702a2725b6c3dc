"""`CuratorSampler`: verl's curriculum-sampler interface, answered by a curator strategy.

verl (0.6.x, ``verl/experimental/dataset/sampler.py``) builds a custom sampler from the data
config and, after every training step, hands it the step's batch::

    data:
      dataloader_num_workers: 0          # verl requires it for curriculum samplers
      sampler:
        class_path: pkg://curator.integrations.verl
        class_name: CuratorSampler
        curator:                         # this adapter's settings (all optional)
          strategy: learnability         # any registered strategy or module:Class path
          params: {n: 8}
          seed: 0                        # default: data.seed, else 0
          window: 1                      # steps per rollout-ledger checkpoint
          history: null                  # windows an outcome stays known (null: forever)
          correct_at: 1.0                # a rollout is correct when its score is >= this
          index_key: index               # non_tensor_batch key with each rollout's prompt id
          reward_key: token_level_scores # batch key; summed over tokens = the rollout's score

``CuratorSampler(data_source, data_config)`` yields ``data.train_batch_size`` prompts per batch,
chosen by the strategy; ``update(batch)`` feeds the batch's rollout scores to the seam
(`curator.integrations.rl.RolloutCurator`). Prompt ids: a row's ``extra_info[index_key]`` when
the dataset keeps its rows in ``dataframe`` (verl's `RLHFDataset`, whose preprocessing scripts
set ``extra_info.index``), else the row position; the batch's ``non_tensor_batch[index_key]``
must carry the same ids. ``state_dict`` / ``load_state_dict`` let verl's `StatefulDataLoader`
checkpoint the sampler: a resumed run continues mid-epoch with the same prompts.

When verl is installed the class subclasses verl's ``AbstractCurriculumSampler`` (verl checks
``isinstance`` before calling ``update``); without verl it is a plain torch ``Sampler`` with the
same signatures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from curator.errors import ConfigError, DataError
from curator.integrations.rl import RolloutCurator, rollout_pool

try:  # verl pulls in ray and tensordict; without it the adapter keeps the interface's signatures
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler as _Base
except Exception:  # ImportError, or a verl install whose heavy dependencies are missing
    _Base = Sampler

__all__ = ["SETTINGS", "CuratorSampler"]

SETTINGS = ("strategy", "params", "seed", "window", "history", "correct_at", "index_key", "reward_key")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    getter = getattr(cfg, "get", None)
    return getter(key, default) if getter is not None else getattr(cfg, key, default)


def _plain(value: Any) -> Any:
    """An omegaconf node as plain Python (dicts / lists), anything else unchanged."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _row_ids(data_source: Any, index_key: str) -> list[str]:
    frame = getattr(data_source, "dataframe", None)
    cols = getattr(frame, "column_names", None) or []
    if frame is not None and "extra_info" in cols:
        infos = frame["extra_info"]
        return [str((info or {}).get(index_key, pos)) for pos, info in enumerate(infos)]
    return [str(i) for i in range(len(data_source))]


class CuratorSampler(_Base):
    """verl ``AbstractCurriculumSampler``: batches of prompts chosen by a curator strategy."""

    def __init__(self, data_source: Any, data_config: Any):
        settings = _plain(_get(_get(data_config, "sampler"), "curator")) or {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"data.sampler.curator must be a mapping, got {type(settings).__name__}")
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"data.sampler.curator has unknown key(s) {unknown}; known: {', '.join(SETTINGS)}")
        self.batch_size = int(_get(data_config, "train_batch_size", 0) or 0)
        if self.batch_size < 1:
            raise ConfigError("CuratorSampler needs data.train_batch_size >= 1 (prompts per batch)")
        self.index_key = str(settings.get("index_key", "index"))
        self.reward_key = str(settings.get("reward_key", "token_level_scores"))
        ids = _row_ids(data_source, self.index_key)
        if self.batch_size > len(ids):
            raise ConfigError(
                f"data.train_batch_size={self.batch_size} is larger than the dataset ({len(ids)} prompts)"
            )
        seed = settings.get("seed", _get(data_config, "seed", 0))
        self.curator = RolloutCurator(
            rollout_pool(ids),
            str(settings.get("strategy", "learnability")),
            settings.get("params") or None,
            seed=0 if seed is None else int(seed),
            window=int(settings.get("window", 1)),
            history=settings.get("history"),
            correct_at=float(settings.get("correct_at", 1.0)),
        )
        self.blocks = len(ids) // self.batch_size
        self._next = 0  # selections handed to the data loader so far (epoch * blocks + block)
        self._updates = 0

    def __len__(self) -> int:
        return self.blocks * self.batch_size

    def __iter__(self) -> Iterator[int]:
        start = self._next
        end = (start // self.blocks + 1) * self.blocks
        c = self.curator
        for i in range(start, end):
            chunk = c._positions(c.select(self.batch_size, index=i)).tolist()
            self._next = i + 1  # before yielding: a checkpoint after this batch resumes at the next
            yield from chunk

    def update(self, batch: Any) -> None:
        """Feed one training step's rollouts (a verl ``DataProto``) to the seam."""
        nt = getattr(batch, "non_tensor_batch", None)
        tb = getattr(batch, "batch", None)
        if nt is None or self.index_key not in nt:
            have = sorted(nt) if nt is not None else []
            raise DataError(
                f"CuratorSampler.update: the batch has no non_tensor_batch[{self.index_key!r}] (has {have})"
            )
        if tb is None or self.reward_key not in tb.keys():
            raise DataError(f"CuratorSampler.update: the batch has no batch[{self.reward_key!r}] (rollout scores)")
        scores = tb[self.reward_key]
        scores = scores.sum(-1) if scores.dim() > 1 else scores
        ids = [str(i) for i in np.asarray(nt[self.index_key]).tolist()]
        self.curator.observe(ids, scores.detach().float().cpu().numpy(), step=self._updates)
        self._updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"curator": self.curator.state_dict(), "next": self._next, "updates": self._updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "curator" not in state:
            raise DataError("CuratorSampler.load_state_dict: not a CuratorSampler state (no 'curator' entry)")
        self.curator.load_state_dict(state["curator"])
        self._next, self._updates = int(state["next"]), int(state["updates"])
