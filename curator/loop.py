"""The loop contract and its registry.

A loop drives one strategy through rounds: ``setup()``, then ``run_round(r)`` for each round
until ``done``, with ``save_state()`` making finished work durable. Built-in loops live in the
top-level ``loops`` package and are registered lazily here; third parties use the entry-point
group ``curator.loops`` or a ``module:Class`` path in ``loop.loop``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from curator.errors import CuratorError
from curator.registry import Registry


@runtime_checkable
class Loop(Protocol):
    done: bool

    def setup(self) -> None: ...

    def run_round(self, r: int) -> None: ...

    def save_state(self) -> None: ...


loops: Registry[type] = Registry("loop", entry_point_group="curator.loops")
loops.register("active", "loops.active:ActiveLoop")


def get_loop(name: str) -> type:
    cls = loops.get(name)
    missing = [m for m in ("setup", "run_round", "save_state") if not callable(getattr(cls, m, None))]
    if missing:
        raise CuratorError(f"loop {name!r} does not satisfy the Loop contract: missing {', '.join(missing)}")
    return cls
