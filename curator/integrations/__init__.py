"""Bring your own trainer: PreMemAcc inside transformers' Trainer and TRL runs.

``PreMemCallback`` (a ``transformers.TrainerCallback``) measures the dynamics ledger at each save
or epoch. It is imported lazily: ``import curator.integrations`` does not import transformers.
See docs/INTEGRATIONS.md.
"""

from __future__ import annotations

from typing import Any

from curator.export import trl_dataset

__all__ = ["PreMemCallback", "trl_dataset"]


def __getattr__(name: str) -> Any:
    if name == "PreMemCallback":
        # lazy: pulls in torch and transformers (the callback subclasses TrainerCallback)
        from curator.integrations.trainer import PreMemCallback

        return PreMemCallback
    raise AttributeError(f"module 'curator.integrations' has no attribute {name!r}")
