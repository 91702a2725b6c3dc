"""Learning dynamics: the ledger, PreMemAcc and related metrics, and the per-checkpoint tracker."""

from curator.dynamics.ledger import LEDGER_COLUMNS, SKIP_REASONS, Ledger, read_ledger
from curator.dynamics.metrics import (
    accuracy,
    accuracy_bounds,
    cartography,
    dataset_premem,
    first_correct_epoch,
    forgetting_events,
    fraction_memorized,
    masked_acc,
    memorization_epoch,
    premem_acc,
    premem_bounds,
    summary,
    train_accuracy,
)
from curator.dynamics.tracker import DynamicsTracker, check_references, track_premem, validate_premem

__all__ = [
    "LEDGER_COLUMNS",
    "SKIP_REASONS",
    "Ledger",
    "read_ledger",
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
    "DynamicsTracker",
    "check_references",
    "track_premem",
    "validate_premem",
]
