"""`RolloutCurator`: the one seam through which a curator strategy chooses the prompts of an RL run.

An RL trainer (TRL's GRPOTrainer, verl, a hand-written loop) asks ``select(k)`` for the next k
prompts, generates a group of completions for each, grades them, and hands the outcomes back with
``observe(prompt_ids, rewards, step)``. The curator keeps those outcomes as a *rollout ledger*: the
ledger schema of docs/LEDGER.md with one checkpoint per window of ``window`` steps (checkpoint
``c`` covers steps ``(c-1)*window .. c*window-1``), ``n_samples`` = completions of the prompt in
that window, ``n_correct`` = those that count as correct, ``reward_mean`` an extra column, and no
target perplexity (a rollout ledger has no teacher-forced target: those columns are NaN).

How a reward becomes "correct": rewards must lie in [0, 1] (binary verdicts or partial credit);
a completion counts as correct when its reward is at least ``correct_at`` (default 1.0: full
credit only). NaN, infinite or out-of-range rewards are refused, never clipped or dropped.

What a strategy sees: ``ctx.pool`` is the whole prompt pool every time (RL draws with
replacement); ``ctx.signals.answers(pool, n)`` gives, per prompt, the outcomes of the latest window
in which it was drawn (the extracted answers when the trainer passed them, else the reference
answer for a correct completion and None for a wrong one), so `learnability` and `uncertainty`
run unchanged; ``ctx.signals.pass_rates(pool)`` is the same information as one array (NaN for a
prompt not drawn within ``history`` windows), the fast path the pass-rate strategies use; a
strategy that declares ``needs={"ledger"}`` gets ``ctx.ledger``, the rollout ledger itself.

Determinism and resumption: the i-th selection draws its tie-breaking generator from
``(seed, i)``, and every selection made is kept in the state, so ``state_dict`` /
``load_state_dict`` restore the seam exactly and a resumed run draws the same prompts as one that
never stopped (a trainer that replays the batches before its resume point gets the recorded
selections back, not fresh ones). Under ``accelerate launch`` / torchrun the main process selects
and broadcasts, so every rank draws the same prompts; trainers feed ``observe`` the outcomes of
every rank (the TRL callback gathers them), so every rank holds the same ledger.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from curator.data.example import Example
from curator.distributed import broadcast_object, is_main_process
from curator.dynamics.ledger import Ledger
from curator.dynamics.metrics import answer_entropy
from curator.errors import DataError, StrategyError
from curator.strategy import SelectionContext, Strategy, build_strategy, strategy_name, top_k

__all__ = ["STATE_FORMAT", "RolloutCurator", "RolloutSignals", "pool_fingerprint", "rollout_pool"]

STATE_FORMAT = "curator.rollout/1"
ID_ONLY_ANSWER = "0"  # the placeholder reference answer of a pool built from ids alone (see rollout_pool)


def rollout_pool(ids: Sequence[Any], questions: Sequence[str] | None = None, answers: Sequence[str] | None = None):
    """Examples for a prompt pool known by ids (and optionally questions / reference answers).

    A pool without reference answers (verl datasets, where the reward function holds them) gets the
    placeholder answer ``"0"`` for every prompt: correctness comes from the rewards, and the
    placeholder only lets answer-based strategies (`learnability`) count correct rollouts.
    """
    n = len(ids)
    for name, col in (("questions", questions), ("answers", answers)):
        if col is not None and len(col) != n:
            raise DataError(f"rollout_pool: {n} ids but {len(col)} {name}")
    return [
        Example(
            id=str(i),
            question="" if questions is None else str(questions[j]),
            solution="",
            answer=ID_ONLY_ANSWER if answers is None else str(answers[j]),
        )
        for j, i in enumerate(ids)
    ]


def pool_fingerprint(ids: Sequence[str]) -> str:
    """16 hex characters identifying a pool (its ids, in order)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


class RolloutSignals:
    """What a strategy may read about the pool in an RL run: the latest outcomes of each prompt."""

    def __init__(self, curator: RolloutCurator):
        self._c = curator

    def pass_rates(self, examples: Sequence[Example]) -> np.ndarray:
        """Fraction correct in each prompt's latest window (NaN: not drawn within ``history``)."""
        rates = self._c._recent_pass_rates()
        if examples is self._c.pool:  # the whole pool, in order (what a strategy scores): no lookups
            return rates
        return rates[self._c._positions([e.id for e in examples])]

    def answers(self, examples: Sequence[Example], n: int | None = None) -> list[list[str | None]]:
        """Each prompt's outcomes in its latest window ([] when not drawn within ``history``)."""
        c = self._c
        live = c._recent_mask()
        whole = examples is c.pool  # the whole pool, in order: only the drawn prompts need work
        positions = np.arange(len(c.pool)) if whole else c._positions([e.id for e in examples])
        empty: list[str | None] = []
        out: list[list[str | None]] = [empty] * len(positions)
        for j in np.flatnonzero(live[positions]).tolist():
            pos = int(positions[j])
            given = c._answers.get(pos)
            if given is not None:
                out[j] = list(given)
            else:
                nc = int(c._last_nc[pos])
                out[j] = [c.pool[pos].answer] * nc + [None] * (int(c._last_ns[pos]) - nc)
        return out

    def answer_entropies(self, examples: Sequence[Example]) -> np.ndarray:
        """`answer_entropy` of each prompt's `answers`, as one array: a prompt whose outcomes came
        as rewards only has two outcomes (the reference, None), so its entropy is the binary
        entropy of its pass rate; only prompts observed with answers are counted one by one."""
        c = self._c
        live = c._recent_mask()
        ns = np.where(live, c._last_ns, 1)  # not drawn recently: no answers, entropy 0
        right, wrong = np.where(live, c._last_nc, 0) / ns, np.where(live, c._last_ns - c._last_nc, 0) / ns
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 log 0 = 0; each share from its own count
            h = -(np.where(right > 0, right * np.log(right), 0.0) + np.where(wrong > 0, wrong * np.log(wrong), 0.0))
        for pos, given in c._answers.items():
            if live[pos]:
                h[pos] = answer_entropy(given)
        if examples is c.pool:
            return h
        return h[c._positions([e.id for e in examples])]

    def embeddings(self, examples: Sequence[Example]) -> np.ndarray:
        raise StrategyError("an RL run's rollout signals have no embeddings; use a rollout strategy")

    def losses(self, examples: Sequence[Example], given_question: bool = True) -> np.ndarray:
        raise StrategyError("an RL run's rollout signals have no losses; use a rollout strategy")


class RolloutCurator:
    """Observe rollout outcomes, keep them as a rollout ledger, and select the next prompts.

    Args:
        pool: the prompt pool, as Examples (``rollout_pool(ids)`` builds one from ids); a
            position in the pool is the trainer's dataset index.
        strategy: a registered strategy name, a ``module:Class`` path, or a Strategy instance.
        params: the strategy's parameters (with a name or path).
        seed: seeds every selection's tie-breaking (selection i uses ``(seed, i)``).
        window: steps per ledger checkpoint.
        history: windows a prompt's latest outcome stays known (None: forever); an older one makes
            the prompt "not drawn" again, so a strategy may retry it.
        correct_at: a completion is correct when its reward is >= this (rewards lie in [0, 1]).
    """

    def __init__(
        self,
        pool: Sequence[Example],
        strategy: str | Strategy = "learnability",
        params: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        window: int = 1,
        history: int | None = None,
        correct_at: float = 1.0,
    ):
        self.pool = list(pool)
        if not self.pool:
            raise DataError("RolloutCurator: the prompt pool is empty")
        self.ids = [e.id for e in self.pool]
        self._index = {i: p for p, i in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})[:5]
            raise DataError(f"RolloutCurator: the pool has duplicate prompt ids: {', '.join(dup)}")
        self.strategy = build_strategy(strategy, params) if isinstance(strategy, str) else strategy
        if params and not isinstance(strategy, str):
            raise StrategyError("RolloutCurator: give params with a strategy name, not with a Strategy instance")
        _check_int("seed", seed, 0)
        _check_int("window", window, 1)
        if history is not None:
            _check_int("history", history, 1)
        if not (isinstance(correct_at, (int, float)) and 0.0 < float(correct_at) <= 1.0):
            raise DataError(f"RolloutCurator: correct_at={correct_at!r} must be a number in (0, 1]")
        self.seed, self.window, self.history, self.correct_at = int(seed), int(window), history, float(correct_at)
        self.fingerprint = pool_fingerprint(self.ids)
        self.notes: list[str] = []
        self._reset()

    # -- state ------------------------------------------------------------------------------------
    def _reset(self) -> None:
        n = len(self.pool)
        self._log: list[list[int]] = []  # every selection made, as pool positions
        self._issued: np.ndarray = np.zeros(n, dtype=np.int64)
        self._windows: dict[int, dict[int, list[float]]] = {}  # checkpoint -> pos -> [ns, nc, reward_sum]
        self._last_cp: np.ndarray = np.zeros(n, dtype=np.int64)  # latest checkpoint a prompt was observed in (0: never)
        self._last_ns: np.ndarray = np.zeros(n, dtype=np.int64)
        self._last_nc: np.ndarray = np.zeros(n, dtype=np.int64)
        self._answers: dict[int, list[str | None]] = {}  # pos -> answers of its latest window, when given
        self._last_step = -1

    @property
    def n_selections(self) -> int:
        return len(self._log)

    @property
    def rollouts(self) -> int:
        """Completions observed so far."""
        return int(sum(v[0] for w in self._windows.values() for v in w.values()))

    @property
    def checkpoint(self) -> int:
        """The ledger checkpoint of the latest observed step (0 before any)."""
        return self._last_step // self.window + 1 if self._last_step >= 0 else 0

    def identity(self) -> dict[str, Any]:
        """What a state dict must match to be loaded here (pool, strategy, ledger settings)."""
        return {
            "pool": self.fingerprint,
            "pool_size": len(self.pool),
            "strategy": repr(self.strategy),
            "seed": self.seed,
            "window": self.window,
            "history": self.history,
            "correct_at": self.correct_at,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (JSON-serialisable)."""
        return {
            "format": STATE_FORMAT,
            **self.identity(),
            "log": [list(s) for s in self._log],
            "windows": {str(c): [[p, *v] for p, v in sorted(w.items())] for c, w in sorted(self._windows.items())},
            "answers": {str(p): a for p, a in sorted(self._answers.items())},
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict``; refuses one made for another pool, strategy or ledger setting."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise DataError(f"not a rollout-curator state dict (format {got!r}, expected {STATE_FORMAT!r})")
        mine = self.identity()
        for key, want in mine.items():
            if state.get(key) != want:
                what = {
                    "pool": "another prompt pool",
                    "pool_size": "another prompt pool",
                    "strategy": "another strategy",
                }
                raise DataError(
                    f"rollout-curator state dict is for {what.get(key, f'another {key}')}: "
                    f"{key}={state.get(key)!r} there, {want!r} here"
                )
        self._reset()
        n = len(self.pool)
        for sel in state["log"]:
            pos = np.asarray(sel, dtype=np.int64)
            if pos.size and (pos.min() < 0 or pos.max() >= n):
                raise DataError("rollout-curator state dict has a selection outside the pool")
            self._log.append(pos.tolist())
            np.add.at(self._issued, pos, 1)
        for c_str, cells in state["windows"].items():
            c = int(c_str)
            self._windows[c] = {int(p): [float(ns), float(nc), float(rs)] for p, ns, nc, rs in cells}
        self._answers = {int(p): list(a) for p, a in state["answers"].items()}
        self._last_step = int(state["last_step"])
        self._rebuild_latest()

    def _rebuild_latest(self) -> None:
        for c in sorted(self._windows):
            for p, (ns, nc, _) in self._windows[c].items():
                self._last_cp[p], self._last_ns[p], self._last_nc[p] = c, int(ns), int(nc)

    # -- observing ----------------------------------------------------------------------------------
    def observe(
        self,
        prompt_ids: Sequence[str],
        rewards: Sequence[float] | np.ndarray,
        step: int,
        answers: Sequence[str | None] | None = None,
    ) -> None:
        """Record one reward per completion (``prompt_ids[j]`` is the prompt of completion j).

        Raises:
            DataError: lengths differ; a reward is NaN, infinite or outside [0, 1]; a prompt id is
                not in the pool or was never issued by ``select``; ``step`` is negative or earlier
                than a step already observed. Nothing is recorded when any check fails.
        """
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        ids = [str(i) for i in prompt_ids]
        if len(ids) != r.size:
            raise DataError(f"observe: {len(ids)} prompt ids but {r.size} rewards (one reward per completion)")
        if answers is not None and len(answers) != len(ids):
            raise DataError(f"observe: {len(ids)} prompt ids but {len(answers)} answers")
        _check_rewards(r)
        _check_int("step", step, 0)
        if step < self._last_step:
            raise DataError(f"observe: step {step} is earlier than step {self._last_step}, already observed")
        unknown = [i for i in ids if i not in self._index]
        if unknown:
            raise DataError(f"observe: prompt id(s) not in the pool: {_shown(unknown)}")
        pos = self._positions(ids)
        never = sorted({ids[j] for j in np.flatnonzero(self._issued[pos] == 0).tolist()})
        if never:
            raise DataError(
                f"observe: prompt id(s) this curator never issued (not in any select() result): {_shown(never)}"
            )
        if not ids:
            return
        cp = int(step) // self.window + 1
        win = self._windows.setdefault(cp, {})
        correct = (r >= self.correct_at).astype(np.float64)
        uniq, inv = np.unique(pos, return_inverse=True)  # one update per prompt, not per completion
        sums = zip(np.bincount(inv).tolist(), np.bincount(inv, correct).tolist(), np.bincount(inv, r).tolist())
        for p, (ns, nc, rs) in zip(uniq.tolist(), sums):
            cell = win.setdefault(p, [0.0, 0.0, 0.0])
            cell[0] += ns
            cell[1] += nc
            cell[2] += rs
            if self._last_cp[p] != cp:
                self._answers.pop(p, None)
            self._last_cp[p], self._last_ns[p], self._last_nc[p] = cp, int(cell[0]), int(cell[1])
        if answers is not None:
            for j, p in enumerate(pos.tolist()):
                self._answers.setdefault(p, []).append(None if answers[j] is None else str(answers[j]))
        self._last_step = int(step)
        self._forget_old()

    def _forget_old(self) -> None:
        if self.history is None:
            return
        oldest = self.checkpoint - self.history + 1
        for c in [c for c in self._windows if c < oldest]:
            del self._windows[c]

    # -- selecting ------------------------------------------------------------------------------------
    def select(self, k: int, index: int | None = None) -> list[str]:
        """The next ``k`` prompt ids (distinct), from the strategy; the same on every rank.

        ``index`` (default: the next one) numbers the selections of a run from 0. A selection
        already made is returned as recorded, so a trainer that replays the batches before its
        resume point draws exactly what it drew before. With fewer than ``k`` prompts in the pool,
        all of them.
        """
        _check_int("k", k, 0)
        made = len(self._log)
        i = made if index is None else index
        _check_int("index", i, 0)
        if i < made:
            pos = self._log[i]
            if len(pos) != min(int(k), len(self.pool)):
                raise DataError(f"select: selection {i} was made with k={len(pos)}, asked again with k={k}")
            return [self.ids[p] for p in pos]
        if i > made:
            raise DataError(f"select: selection {i} asked for, but only {made} were made (they are made in order)")
        chosen = self._choose(int(k)) if is_main_process() else None
        pos = broadcast_object(chosen, "sharing the curator's selection of prompts")
        self._log.append(pos)
        np.add.at(self._issued, np.asarray(pos, dtype=np.int64), 1)
        return [self.ids[p] for p in pos]

    def _choose(self, k: int) -> list[int]:
        k = min(k, len(self.pool))
        rng = np.random.default_rng([self.seed, len(self._log)])
        ctx = SelectionContext(pool=self.pool, rng=rng, round=len(self._log))
        ctx.signals = RolloutSignals(self)  # type: ignore[assignment]  # the RL run's signals (answers, pass rates)
        if "ledger" in self.strategy.needs:
            ctx.ledger = self.ledger() if self._windows else None
        name = strategy_name(self.strategy)
        if self.strategy.ranks_by_score():
            # a score-then-top-k strategy: the same choice as Strategy.select, without building the
            # pool's id list and per-candidate score dict each step (a 100k pool: most of the cost)
            scores = np.asarray(self.strategy.score(ctx), dtype=np.float64)
            if scores.shape != (len(self.pool),):
                raise StrategyError(
                    f"strategy {name!r}: score() returned shape {scores.shape}, expected ({len(self.pool)},)"
                )
            return self._positions(top_k(scores, k, self.ids, rng)).tolist()
        chosen = list(self.strategy.select(ctx, k))
        bad = [c for c in chosen if not isinstance(c, str) or c not in self._index]
        if bad:
            raise StrategyError(f"strategy {name!r} returned ids that are not in the prompt pool: {_shown(bad)}")
        if len(set(chosen)) != len(chosen) or len(chosen) != k:
            raise StrategyError(f"strategy {name!r} returned {len(chosen)} ids ({len(set(chosen))} distinct) for k={k}")
        self.notes = list(ctx.notes)
        return self._positions(chosen).tolist()

    # -- the ledger -----------------------------------------------------------------------------------
    def ledger(self) -> Ledger:
        """The rollout ledger: every prompt drawn in a kept window x every kept window.

        A prompt not drawn in a window has ``n_samples=0`` with ``skip_reason="deferred"``; the
        target columns are NaN (``meta["kind"] == "rollout"``).
        """
        if not self._windows:
            raise DataError("the rollout ledger is empty: nothing observed yet")
        cps = sorted(self._windows)
        drawn = sorted({p for w in self._windows.values() for p in w})
        k = int(max(v[0] for w in self._windows.values() for v in w.values()))
        rows = []
        for c in cps:
            w = self._windows[c]
            for p in drawn:
                ns, nc, rs = w.get(p, (0.0, 0.0, 0.0))
                rows.append(
                    {
                        "example_id": self.ids[p],
                        "checkpoint": c,
                        "step": (c - 1) * self.window,
                        "epoch": 0.0,
                        "n_samples": int(ns),
                        "n_correct": int(nc),
                        "target_nll": math.nan,
                        "perplexity": math.nan,
                        "memorized": False,
                        "skip_reason": None if ns else "deferred",
                        "reward_mean": rs / ns if ns else math.nan,
                    }
                )
        return Ledger.from_rows(rows, kind="rollout", k=k, window=self.window, correct_at=self.correct_at)

    # -- helpers ---------------------------------------------------------------------------------------
    def _positions(self, ids: Sequence[str]) -> np.ndarray:
        index = self._index
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def _recent_mask(self) -> np.ndarray:
        if self.history is None:
            return self._last_cp > 0
        return self._last_cp >= max(1, self.checkpoint - self.history + 1)

    def _recent_pass_rates(self) -> np.ndarray:
        live = self._recent_mask()
        out = np.full(len(self.pool), np.nan)
        out[live] = self._last_nc[live] / self._last_ns[live]
        return out


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise DataError(f"{name}={value!r} must be an integer >= {lo}")


def _check_rewards(r: np.ndarray) -> None:
    bad = ~np.isfinite(r) | (r < 0.0) | (r > 1.0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"observe: {int(bad.sum())} reward(s) are NaN, infinite or outside [0, 1] "
            f"(first: completion {j}, reward {float(r[j])!r}); rewards must be verdicts or partial credit in [0, 1]"
        )


def _shown(items: Sequence[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(map(repr, list(items)[:limit])) + more
