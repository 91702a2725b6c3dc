"""Multi-seed runs: one recipe run per seed, each in its own ``seed-<n>/`` directory, then one
comparison across seeds with bands and bootstrap intervals (curator.tracking.compare).

Every seed's run is an ordinary `run_recipe` run (its own seed set, training, sampling and
selection randomness, its own MLflow store), so each resumes after its last finished round; a
rerun of the multi-seed command skips finished seeds in seconds and continues the unfinished one.
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


@dataclass
class SeedsSummary:
    run_dir: Path
    seeds: list[int]
    per_seed: dict[int, Any] = field(default_factory=dict)  # seed -> RunSummary
    compare_table: str | None = None
    curves_png: Path | None = None
    seconds: float = 0.0


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """The single-seed recipe run for ``seed``: same settings, its own seed and directory."""
    return dataclasses.replace(
        recipe, seed=int(seed), seeds=None, output_dir=str(recipe.run_dir / SEED_DIR.format(seed=int(seed)))
    )


def run_seeds(
    recipe: Recipe, seeds: list[int] | None = None, progress: bool = True, echo: Callable[[str], Any] = print
) -> SeedsSummary:
    """Run (or resume) ``recipe`` once per seed (default ``recipe.seeds``), then compare across seeds."""

    seeds = list(seeds if seeds is not None else (recipe.seeds or [recipe.seed]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: give distinct seeds, got {seeds}")
    run_dir = recipe.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # curator's own name, as `curate run` uses: output_dir may be the folder of the user's recipe.yaml
    atomic_write_text(run_dir / RESOLVED_RECIPE, dataclasses.replace(recipe, seeds=seeds).to_yaml())
    t0 = time.time()
    out = SeedsSummary(run_dir=run_dir, seeds=seeds)
    for i, s in enumerate(seeds):
        echo(f"seed {s} ({i + 1}/{len(seeds)}) -> {run_dir / SEED_DIR.format(seed=s)}")
        out.per_seed[s] = run_recipe(seed_recipe(recipe, s), progress=progress, echo=echo)
    result = compare_run_dir(run_dir, baseline="iid", out_dir=run_dir)
    out.compare_table, out.curves_png = result.table, result.png
    out.seconds = time.time() - t0
    return out
