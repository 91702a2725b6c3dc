"""Learning dynamics: the ledger, PreMemAcc and related metrics, and the per-checkpoint tracker.

Names are loaded on first use, so that importing one light module of this package (e.g.
`curator.dynamics.settings`, which every recipe load needs) does not import pandas.
"""

from __future__ import annotations

from curator.lazy import lazy_exports

_EXPORTS = {
    "LEDGER_COLUMNS": "curator.dynamics.ledger",
    "SKIP_REASONS": "curator.dynamics.ledger",
    "Ledger": "curator.dynamics.ledger",
    "read_ledger": "curator.dynamics.ledger",
    **{
        name: "curator.dynamics.metrics"
        for name in (
            "accuracy",
            "accuracy_bounds",
            "cartography",
            "dataset_premem",
            "first_correct_epoch",
            "forgetting_events",
            "fraction_memorized",
            "masked_acc",
            "memorization_epoch",
            "premem_acc",
            "premem_bounds",
            "summary",
            "train_accuracy",
        )
    },
    "DynamicsTracker": "curator.dynamics.tracker",
    "check_references": "curator.dynamics.tracker",
    "validate_premem": "curator.dynamics.tracker",
    "DynamicsSettings": "curator.dynamics.settings",
    "EvalSettings": "curator.dynamics.settings",
    "MeasureSettings": "curator.dynamics.settings",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
