"""The loop contract and its registry.

A loop drives one strategy through rounds: ``setup()``, then ``run_round(r)`` for each round
until ``done``, with ``save_state()`` making finished work durable. Built-in loops live in the
top-level ``loops`` package and are registered lazily here; third parties use the entry-point
group ``curator.loops`` or a ``module:Class`` path in ``loop.loop``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from curator.errors import CuratorError
from curator.registry import Registry


@runtime_checkable
class Loop(Protocol):
    """What `run_recipe` calls on a loop, in order: ``cls(workspace, spec)``, ``setup()``, then for
    each round ``run_round(r)`` and ``save_state()`` until ``done``, then ``summary()`` and, after
    the strategies are compared, ``log_final_artifacts(compare_result)``.

    A loop's round of training and measurement should go through `curator.engine.train_and_track`.
    """

    done: bool  # no more rounds to run (finished, or stopped early)
    spec: Any  # the `StrategySpec` it runs; ``spec.run_name`` names it in results

    def setup(self) -> None:
        """Open tracking and replay finished rounds from disk (resume)."""

    def run_round(self, r: int) -> None:
        """Run round ``r``; a no-op for rounds already done."""

    def save_state(self) -> None:
        """Make finished work durable."""

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary of the run (rounds done, why it stopped, final metrics)."""

    def log_final_artifacts(self, compare_result: Any) -> None:
        """Log the strategies' comparison (curves, table) with this run."""


LOOP_METHODS = ("setup", "run_round", "save_state", "summary", "log_final_artifacts")


loops: Registry[type] = Registry("loop", entry_point_group="curator.loops")
loops.register("active", "loops.active:ActiveLoop")


def check_loop(name: str, cls: Any) -> None:
    """Raise CuratorError naming every part of the Loop contract ``cls`` lacks (methods only; the
    attributes ``done`` and ``spec`` are checked on the instance by `check_loop_instance`)."""
    missing = [m for m in LOOP_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise CuratorError(
            f"loop {name!r} does not satisfy the Loop contract (curator.loop.Loop): missing {', '.join(missing)}"
        )


def check_loop_instance(name: str, loop: Any) -> None:
    missing = [a for a in ("done", "spec") if not hasattr(loop, a)]
    if missing:
        raise CuratorError(
            f"loop {name!r} does not satisfy the Loop contract (curator.loop.Loop): its "
            f"instances have no {', '.join(missing)} attribute(s); set them in __init__"
        )


def get_loop(name: str) -> type:
    cls = loops.get(name)
    check_loop(name, cls)
    return cls
