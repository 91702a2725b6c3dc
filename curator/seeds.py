"""Multi-seed runs: one recipe run per seed, each in its own ``seed-<n>/`` directory, then one
comparison across seeds with bands and bootstrap intervals (curator.tracking.compare).

Every seed's run is an ordinary `run_recipe` run (its own seed set, training, sampling and
selection randomness), so each resumes after its last finished round; a rerun of the multi-seed
command skips finished seeds in seconds and continues the unfinished one.

MLflow: one store (``<run_dir>/mlflow.db``, unless tracking.uri names another) and one
experiment hold every seed, so the UI compares strategy x seed in one table: each run is tagged
with its ``seed`` and named ``<label> seed <n>``. Runs made before this kept one store per seed
(``seed-<n>/mlflow.db``); resuming one logs its finished rounds into the shared store.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.errors import ConfigError
from curator.io import atomic_write_text
from curator.recipes import Recipe
from curator.rounds import RESOLVED_RECIPE, SEED_DIR
from curator.run import run_recipe
from curator.tracking.compare import compare_run_dir
from curator.tracking.mlflow_store import default_tracking_uri


@dataclass
class SeedsSummary:
    run_dir: Path
    seeds: list[int]
    per_seed: dict[int, Any] = field(default_factory=dict)  # seed -> RunSummary
    tracking_uri: str = ""  # the one MLflow store every seed logs to
    compare_table: str | None = None
    curves_png: Path | None = None
    seconds: float = 0.0


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """The single-seed recipe run for ``seed``: same settings, its own seed and directory."""
    return dataclasses.replace(
        recipe, seed=int(seed), seeds=None, output_dir=str(recipe.run_dir / SEED_DIR.format(seed=int(seed)))
    )


def store_uri(recipe: Recipe) -> str:
    """The one MLflow store every seed of ``recipe`` logs to: ``tracking.uri``, else the sqlite file
    at the top of its run directory (the store the README's ``mlflow ui`` command opens)."""
    return recipe.tracking.uri or default_tracking_uri(recipe.run_dir.resolve())


def _prepare_shared_store(recipe: Recipe, run_dir: Path, seeds: list[int]):
    """Lock the top directory, clear what killed writes left there, and make the shared store and
    its experiment (artifacts under ``<run_dir>/mlartifacts``, tagged as multi-seed) before any seed
    runs. Returns the held lock."""
    from curator import distributed  # lazy: pulls in torch
    from curator.run import _lock_run_dir, remove_stray_temporaries  # lazy: pulls in pandas, torch
    from curator.tracking.mlflow_store import SEEDS_TAG, _client, check_reachable, ensure_experiment  # lazy: mlflow

    distributed.init_launch()
    if not distributed.is_main_process():
        return None
    lock = _lock_run_dir(run_dir)
    try:
        remove_stray_temporaries(run_dir)
        uri = store_uri(recipe)
        for note in check_reachable(uri, rebuild_for=run_dir if recipe.tracking.uri is None else None):
            print(f"note: {note}", flush=True)
        tags = {SEEDS_TAG: ",".join(str(s) for s in seeds)}
        ensure_experiment(_client(uri), recipe.experiment, run_dir / "mlartifacts", tags=tags)
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    return lock


def run_seeds(
    recipe: Recipe, seeds: list[int] | None = None, progress: bool = True, echo: Callable[[str], Any] = print
) -> SeedsSummary:
    """Run (or resume) ``recipe`` once per seed (default ``recipe.seeds``), then compare across seeds."""

    seeds = list(seeds if seeds is not None else (recipe.seeds or [recipe.seed]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give distinct seeds, got {seeds}")
    run_dir = recipe.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _prepare_shared_store(recipe, run_dir, seeds)
    try:
        # curator's own name, as `curate run` uses: output_dir may be the folder of the user's recipe.yaml
        atomic_write_text(run_dir / RESOLVED_RECIPE, dataclasses.replace(recipe, seeds=seeds).to_yaml())
        t0 = time.time()
        out = SeedsSummary(run_dir=run_dir, seeds=seeds, tracking_uri=store_uri(recipe))
        for i, s in enumerate(seeds):
            echo(f"seed {s} ({i + 1}/{len(seeds)}) -> {run_dir / SEED_DIR.format(seed=s)}")
            out.per_seed[s] = run_recipe(seed_recipe(recipe, s), progress=progress, echo=echo, store_dir=run_dir)
    finally:
        if lock is not None:
            lock.close()
    result = compare_run_dir(run_dir, baseline="iid", out_dir=run_dir)
    out.compare_table, out.curves_png = result.table, result.png
    out.seconds = time.time() - t0
    return out
