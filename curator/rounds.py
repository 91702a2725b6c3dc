"""A run directory on disk: the single definition of its layout, and one strategy's rounds in it.

``curate run`` (``curator/run.py``) and the loop (``loops/active.py``) write it; ``curate compare``,
``curate export``, multi-seed runs and the organism reports read it, through the names and
functions below only. A run directory (a recipe's ``output_dir``)::

    curator-run.yaml              the resolved recipe (RESOLVED_RECIPE; runs made before it: recipe.yaml)
    seed_ids.json                 S_0, the seed set every strategy starts from (SEED_IDS)
    mlflow.db, mlartifacts/       the default MLflow store and its artifacts (MLFLOW_DB, MLFLOW_ARTIFACTS)
    compare.md, curves.png        the comparison across strategies (COMPARE_TABLE, CURVES)
    .curator/                     bookkeeping: the run's lock, the pool's fingerprint (STATE_DIR)
    <strategy>/                   one per strategy, below (`strategy_dirs`)

A multi-seed run holds one such directory per seed, ``seed-<n>/`` (SEED_DIR, `seed_dirs`).
Each strategy's folder ``<run_dir>/<strategy>/``::

    run.json                      MLflow run id and the strategy spec (written by the loop)
    round-00/ledger.parquet       the round's learning dynamics
            /selection.parquet    every candidate's score, selected or not
            /new_examples.jsonl   examples a generator made this round (only when it made some)
            /next_train_ids.json  S_{r+1}: the training set of the next round
            /checkpoints.json     the round's checkpoint records
            /trainable_state.pt   trainable weights the next round starts from (continue_training)
            /metrics.json
            /DONE                 written last: the round is finished
            /LOGGED               its MLflow metrics and artifacts are in

Every file is written atomically (temporary path, then rename), and ``DONE`` only after all the
others, so a round folder without ``DONE`` is a half-done round: readers ignore it and the loop
redoes it from its start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curator import readback
from curator.data.example import read_examples_jsonl, write_examples_jsonl
from curator.io import atomic_path, atomic_write_json, atomic_write_text, read_json

# ---- the run directory (module docstring)
RESOLVED_RECIPE = "curator-run.yaml"
LEGACY_RECIPE = "recipe.yaml"  # what runs made before curator-run.yaml called it (still read)
SEED_IDS = "seed_ids.json"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
COMPARE_TABLE = "compare.md"
CURVES = "curves.png"
STATE_DIR = ".curator"
SEED_DIR = "seed-{seed}"
STRATEGY_RUN = "run.json"  # in a strategy's folder: its MLflow run id and spec; marks the folder


def resolved_recipe_file(run_dir: str | os.PathLike) -> Path | None:
    """A run directory's resolved recipe: curator-run.yaml, else recipe.yaml (a run made before that
    name, or a multi-seed run's seed folder planted by hand); None when it has neither."""
    for name in (RESOLVED_RECIPE, LEGACY_RECIPE):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def seed_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The per-seed run directories of a multi-seed run (``seed-<n>/``), in seed order."""
    found = [p for p in Path(run_dir).glob("seed-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def strategy_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """The strategies' folders of a run directory (those with a ``run.json``), by name."""
    return sorted(p for p in Path(run_dir).iterdir() if (p / STRATEGY_RUN).exists())


def read_seed_ids(run_dir: str | os.PathLike) -> list[str]:
    """S_0, the ids of the seed set of a run directory."""
    return read_json(Path(run_dir) / SEED_IDS)


# ---- one strategy's rounds

LEDGER = "ledger.parquet"
SELECTION = "selection.parquet"
NEW_EXAMPLES = "new_examples.jsonl"
NEXT_TRAIN_IDS = "next_train_ids.json"
CHECKPOINTS = "checkpoints.json"
TRAINABLE_STATE = "trainable_state.pt"
METRICS = "metrics.json"
DONE = "DONE"
LOGGED = "LOGGED"
# a round's files that go to MLflow as artifacts, in this order (those that exist)
ARTIFACTS = (LEDGER, SELECTION, METRICS, CHECKPOINTS, NEW_EXAMPLES)


class RoundStore:
    """The rounds of one strategy, in ``strategy_dir`` (module docstring)."""

    def __init__(self, strategy_dir: str | os.PathLike):
        self.dir = Path(strategy_dir)

    def round_dir(self, r: int) -> Path:
        return self.dir / f"round-{r:02d}"

    def path(self, r: int, name: str) -> Path:
        return self.round_dir(r) / name

    # ---- reading -------------------------------------------------------------------------
    def is_done(self, r: int) -> bool:
        return self.path(r, DONE).exists()

    def finished(self) -> list[int]:
        """Indices of the finished rounds (``DONE`` written), in order; half-done rounds are left out."""
        found = (d.name[len("round-") :] for d in self.dir.glob("round-*") if d.is_dir())
        return sorted(int(s) for s in found if s.isdigit() and self.is_done(int(s)))

    def metrics(self, r: int) -> dict[str, Any]:
        """A finished round's metrics, checked (curator/readback.py), after a cheap check of the
        round's ledger and checkpoint records: a damaged file is refused with its name, never trusted."""
        metrics = readback.read_checked(self.path(r, METRICS), readback.check_metrics)
        self.check_round_files(r)
        return metrics

    def check_round_files(self, r: int) -> None:
        """The round's ledger (when there: rounds planted by other tools may have none) is a readable,
        non-empty Parquet file and its checkpoints.json a list of numeric records."""
        if self.path(r, LEDGER).exists():
            readback.check_parquet_file(self.path(r, LEDGER), readback.REDO_ROUND.format(folder=self.round_dir(r)))
        if self.path(r, CHECKPOINTS).exists():
            readback.read_checked(self.path(r, CHECKPOINTS), readback.check_checkpoint_records)

    def next_train_ids(self, r: int) -> list[str]:
        return readback.read_checked(self.path(r, NEXT_TRAIN_IDS), readback.check_id_list)

    def new_examples(self, r: int) -> list:
        """Examples a generator made in round ``r`` (none when it made none)."""
        p = self.path(r, NEW_EXAMPLES)
        return read_examples_jsonl(p) if p.exists() else []

    def is_logged(self, r: int) -> bool:
        return self.path(r, LOGGED).exists()

    def artifacts(self, r: int) -> list[Path]:
        return [p for p in (self.path(r, n) for n in ARTIFACTS) if p.exists()]

    # ---- writing (the loop's main process) -------------------------------------------------
    def start(self, r: int) -> Path:
        rd = self.round_dir(r)
        rd.mkdir(parents=True, exist_ok=True)
        return rd

    def write_ledger(self, r: int, ledger) -> None:
        ledger.to_parquet(self.path(r, LEDGER))  # Ledger.to_parquet writes atomically

    def write_selection(self, r: int, df) -> None:
        with atomic_path(self.path(r, SELECTION)) as tmp:
            df.to_parquet(tmp, index=False)

    def write_round_outputs(self, r: int, next_ids: list[str], checkpoints: Any, new_examples: Iterable = ()) -> None:
        new_examples = list(new_examples)
        if new_examples:
            write_examples_jsonl(self.path(r, NEW_EXAMPLES), new_examples)
        atomic_write_text(self.path(r, NEXT_TRAIN_IDS), json.dumps(next_ids))
        atomic_write_json(self.path(r, CHECKPOINTS), checkpoints)

    def write_trainable_state(self, r: int, state: dict) -> None:
        import torch

        with atomic_path(self.path(r, TRAINABLE_STATE)) as tmp:
            torch.save(state, tmp)

    def finish(self, r: int, metrics: dict[str, Any]) -> None:
        """Write the round's metrics, then ``DONE``: call only once every other file is written."""
        atomic_write_json(self.path(r, METRICS), metrics)
        atomic_write_text(self.path(r, DONE), "")

    def mark_logged(self, r: int) -> None:
        atomic_write_text(self.path(r, LOGGED), "")
