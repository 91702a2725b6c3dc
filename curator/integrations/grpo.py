"""A curator strategy chooses the prompts of a TRL `GRPOTrainer` run.

One extra line after building the trainer::

    trainer = GRPOTrainer(model, reward_funcs=[grader_reward("gsm8k")], args=cfg, train_dataset=ds)
    GRPOCuration("learnability", seed=0).attach(trainer)
    trainer.train()

What ``attach`` does, all through the trainer's own extension points:

- **the sampler**: GRPOTrainer draws its prompts from ``_get_train_sampler`` (a `RepeatSampler`:
  ``generation_batch_size // num_generations`` distinct prompts per generation batch, each
  repeated ``num_generations`` times, the block repeated ``num_iterations * steps_per_generation``
  times). ``attach`` replaces it on this trainer with `CuratedSampler`, which yields exactly that
  layout, with the distinct prompts of each block chosen by the strategy. So ``num_generations``
  groups, gradient accumulation / ``steps_per_generation`` and ``num_iterations`` keep their meaning.
- **the rewards**: each reward function is wrapped so that, while training, the rewards it returns
  are recorded with the prompt ids of their completions (a dataset column: ``id_column`` when the
  dataset has it, else ``curator_id``, added with the row position). At the end of each optimizer
  step a `TrainerCallback` gathers every process's records and calls ``observe`` with the same
  reward the trainer optimises (the ``reward_weights``-weighted sum over functions, or the function
  named by ``reward``), which must lie in [0, 1] (`grader_reward` gives 0/1 verdicts).
- **several processes**: the main process selects and broadcasts; every rank draws the same prompts
  and holds the same ledger (accelerate then splits each batch over the ranks as it does for
  `RepeatSampler`).
- **resumption**: at every save the seam's state goes into the checkpoint directory
  (``curator_rollouts.json``); resuming from that checkpoint restores it, and the batches the
  trainer replays to reach its resume point get the recorded selections back.

One lag to know: accelerate's data loader fetches one batch ahead, so the prompts of generation
batch t+1 are chosen before the rewards of batch t are known (they see batches up to t-1).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from curator.data.grading import get_grader
from curator.distributed import gather_objects, is_main_process, world_size
from curator.errors import ConfigError
from curator.integrations.rl import RolloutCurator, rollout_pool
from curator.io import atomic_write_json
from curator.strategy import Strategy

__all__ = ["STATE_FILE", "CuratedSampler", "GRPOCuration", "completion_text", "grader_reward"]

log = logging.getLogger(__name__)

STATE_FILE = "curator_rollouts.json"
ID_COLUMN = "curator_id"


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string, or the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def grader_reward(
    grader: str = "auto", answer_column: str = "answer", stop: Sequence[str] = ()
) -> Callable[..., list[float]]:
    """A TRL reward function: 1.0 when curator's grader finds the row's answer in the completion, else 0.0.

    The dataset needs an ``answer_column`` column with each prompt's reference final answer. A
    completion is cut at the first of the ``stop`` strings before grading (as curator's samplers
    cut theirs), so text a model writes after its answer cannot change the verdict.
    """
    g = get_grader(grader)
    stops = tuple(s for s in stop if s)

    def text(c: Any) -> str:
        t = completion_text(c)
        for s in stops:
            t = t.split(s, 1)[0]
        return t

    def reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if answer_column not in kwargs:
            have = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids"))
            raise ConfigError(
                f"grader_reward: the training dataset has no {answer_column!r} column (columns: {', '.join(have)}); "
                "add the reference answers or pass answer_column=..."
            )
        refs = kwargs[answer_column]
        return [1.0 if g.is_correct(text(c), str(a)) else 0.0 for c, a in zip(completions, refs)]

    reward.__name__ = f"curator_{g.name}"
    return reward


class CuratedSampler(Sampler[int]):
    """`RepeatSampler`'s layout with the distinct prompts of each block chosen by a `RolloutCurator`.

    Block j of epoch e is selection ``e * blocks + j`` of the curator (recorded selections are
    replayed, so resuming mid-epoch draws what an uninterrupted run drew).
    """

    def __init__(self, curator: RolloutCurator, mini_repeat_count: int, batch_size: int, repeat_count: int = 1):
        if batch_size > len(curator.pool):
            raise ConfigError(
                f"a generation batch needs {batch_size} distinct prompts but the dataset has {len(curator.pool)}"
            )
        self.curator = curator
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count
        self.blocks = len(curator.pool) // batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        c = self.curator
        for j in range(self.blocks):
            chunk = c._positions(c.select(self.batch_size, index=self.epoch * self.blocks + j)).tolist()
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return self.blocks * self.batch_size * self.mini_repeat_count * self.repeat_count


class GRPOCuration(TrainerCallback):
    """Run a TRL GRPOTrainer under a curator strategy (``GRPOCuration("learnability").attach(trainer)``).

    Args:
        strategy: a registered name, a ``module:Class`` path or a Strategy instance.
        params: the strategy's parameters.
        seed: the selections' seed (default: the trainer's ``args.seed``).
        window / history / correct_at: the rollout ledger's settings (see `RolloutCurator`).
        id_column: the dataset column holding prompt ids (default ``"id"``; row positions when absent).
        reward: the name of the reward function whose output counts as the verdict (default: the
            weighted sum of all of them, as the trainer optimises it).
        grader: when given, the final answers it extracts are recorded too (for `uncertainty`).
    """

    def __init__(
        self,
        strategy: str | Strategy = "learnability",
        params: dict[str, Any] | None = None,
        *,
        seed: int | None = None,
        window: int = 1,
        history: int | None = None,
        correct_at: float = 1.0,
        id_column: str = "id",
        reward: str | None = None,
        grader: str | None = None,
    ):
        self.strategy, self.params = strategy, params
        self.seed, self.window, self.history, self.correct_at = seed, window, history, correct_at
        self.id_column, self.reward, self.grader = id_column, reward, grader
        self.curator: RolloutCurator | None = None
        self.trainer: Any = None
        self._pending: list[tuple[int, list[str], list[float], list[str | None] | None]] = []

    # -- attaching -------------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> GRPOCuration:
        """Install the sampler, the reward recorders and this callback on ``trainer``; returns self."""
        for name in ("_get_train_sampler", "reward_funcs", "num_generations"):
            if not hasattr(trainer, name):
                raise ConfigError(
                    f"GRPOCuration.attach needs a TRL GRPOTrainer; {type(trainer).__name__} has no {name}"
                )
        ds = trainer.train_dataset
        if ds is None or not hasattr(ds, "__len__") or not hasattr(ds, "column_names"):
            raise ConfigError(
                "GRPOCuration needs a map-style `datasets.Dataset` train_dataset (not an IterableDataset)"
            )
        if self.id_column in ds.column_names:
            ids = [str(i) for i in ds[self.id_column]]
            col = self.id_column
        else:
            ids = [str(i) for i in range(len(ds))]
            trainer.train_dataset = ds.add_column(ID_COLUMN, ids)
            col = ID_COLUMN
        self._col = col
        answers = ds["answer"] if "answer" in ds.column_names else None
        seed = trainer.args.seed if self.seed is None else self.seed
        self.curator = RolloutCurator(
            rollout_pool(ids, answers=answers),
            self.strategy,
            self.params,
            seed=seed,
            window=self.window,
            history=self.history,
            correct_at=self.correct_at,
        )
        self.trainer = trainer
        self._wrap_rewards(trainer)
        trainer._get_train_sampler = self.sampler_for(trainer)
        trainer.add_callback(self)
        return self

    def sampler_for(self, trainer: Any) -> Callable[..., CuratedSampler]:
        """What replaces ``trainer._get_train_sampler`` (same layout as TRL's RepeatSampler)."""

        def make(dataset: Any = None) -> CuratedSampler:
            assert self.curator is not None
            args = trainer.args
            return CuratedSampler(
                self.curator,
                mini_repeat_count=trainer.num_generations,
                batch_size=args.generation_batch_size // trainer.num_generations,
                repeat_count=trainer.num_iterations * args.steps_per_generation,
            )

        return make

    def _wrap_rewards(self, trainer: Any) -> None:
        names = list(trainer.reward_func_names)
        if self.reward is not None and self.reward not in names:
            raise ConfigError(f"GRPOCuration(reward={self.reward!r}): the trainer's reward functions are {names}")
        used = [i for i, n in enumerate(names) if self.reward in (None, n)]
        for i in used:
            f = trainer.reward_funcs[i]
            if isinstance(f, torch.nn.Module) or not callable(f) or _is_async(f):
                raise ConfigError(
                    f"GRPOCuration: reward function {names[i]!r} is a model or a coroutine, which curator cannot "
                    "record; name a plain reward function with reward=... (e.g. grader_reward(...))"
                )
            trainer.reward_funcs[i] = self._recorder(i, f)
        self._used = used

    def _recorder(self, i: int, f: Callable[..., Any]) -> Callable[..., Any]:
        grader = get_grader(self.grader) if self.grader else None

        def recorded(*args: Any, **kwargs: Any) -> Any:
            out = f(*args, **kwargs)
            if self.trainer is not None and self.trainer.model.training:
                comps = kwargs.get("completions", [])
                answers = [grader.extract(completion_text(c)) for c in comps] if grader and i == self._used[0] else None
                vals = [math.nan if r is None else float(r) for r in out]
                self._pending.append((i, [str(x) for x in kwargs[self._col]], vals, answers))
            return out

        recorded.__name__ = getattr(f, "__name__", f"reward_{i}")
        return recorded

    # -- the callback ----------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
            if not os.path.isfile(path):
                raise ConfigError(
                    f"resuming at step {state.global_step} but {path} is missing: the checkpoint was not saved "
                    "under GRPOCuration, so the prompts it drew cannot be replayed"
                )
            assert self.curator is not None
            with open(path, encoding="utf-8") as fh:
                self.curator.load_state_dict(json.load(fh))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.flush(step=state.global_step - 1)

    def flush(self, step: int) -> None:
        """Hand the recorded rewards of every process to the curator (a collective under a launch)."""
        assert self.curator is not None
        local = self._combine(self._pending)
        self._pending = []
        parts = gather_objects(local, "gathering rollout rewards") if world_size() > 1 else [local]
        ids = [x for p in parts for x in p[0]]
        if not ids:
            return
        rewards = [x for p in parts for x in p[1]]
        answers = [x for p in parts for x in (p[2] or [])] if all(p[2] is not None for p in parts) else None
        self.curator.observe(ids, rewards, step=max(step, 0), answers=answers)

    def _combine(self, pending: list[Any]) -> tuple[list[str], list[float], list[str | None] | None]:
        """One reward per completion: the trainer's weighted sum over the recorded functions."""
        if not pending:
            return [], [], None
        weights = self.trainer.reward_weights.detach().cpu().numpy()
        by_call: list[list[Any]] = []
        for rec in pending:  # the used functions are called in order, once per generation batch
            if rec[0] == self._used[0]:
                by_call.append([])
            by_call[-1].append(rec)
        ids: list[str] = []
        rewards: list[float] = []
        answers: list[str | None] | None = [] if self.grader else None
        for call in by_call:
            cols = np.array([rec[2] for rec in call], dtype=np.float64)  # functions x completions
            w = weights[[rec[0] for rec in call]][:, None] if self.reward is None else np.ones((1, 1))
            total = np.nansum(cols * w, axis=0)
            scorable = ~np.isnan(cols).all(axis=0)
            if (~scorable).any():
                log.warning(
                    "GRPOCuration: %d completion(s) had no reward from any function; not observed",
                    int((~scorable).sum()),
                )
            ids += [x for x, ok in zip(call[0][1], scorable) if ok]
            rewards += total[scorable].tolist()
            if answers is not None and call[0][3] is not None:
                answers += [a for a, ok in zip(call[0][3], scorable) if ok]
        return ids, rewards, answers

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.curator is not None and is_main_process():
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", STATE_FILE)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write_json(path, self.curator.state_dict())


def _is_async(f: Any) -> bool:
    return inspect.iscoroutinefunction(f) or inspect.iscoroutinefunction(type(f).__call__)
