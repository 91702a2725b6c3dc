"""`curate probes`: response-family probes through SFT / extended SFT / DPO, and their figure."""

from __future__ import annotations

from pathlib import Path

import click

from curator.config import to_dict
from curator.errors import ConfigError
from curator.io import read_json


def _finished(run_dir: Path, recipe) -> bool:
    """True when `run_dir` holds a finished run of this same recipe; ConfigError when of another."""

    if not (run_dir / "DONE").exists():
        return False
    old = read_json(run_dir / "summary.json").get("recipe")
    if old != to_dict(recipe):
        raise ConfigError(
            f"{run_dir} holds a finished run of a different '{recipe.name}' recipe; use another "
            "--out or remove that directory"
        )
    return True


@click.command()
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="runs/probes",
    show_default=True,
    help="One sub-directory per recipe (a rerun skips finished ones) and the figure.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting of every recipe, e.g. --set model.name=tiny-random (repeatable).",
)
@click.option(
    "--metric",
    type=click.Choice(["logprob_sum", "logprob_mean"]),
    default="logprob_sum",
    show_default=True,
    help="What the panels show: summed or mean per-token log-probability.",
)
@click.option("--plot-only", is_flag=True, help="Redraw the figure from finished runs in --out; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def probes(recipes, out_dir, overrides, metric, plot_only, quiet):
    """Train through each RECIPE's stages (SFT, extended SFT, DPO), logging the probe families at every
    evaluation step, then draw one panel per family with one line per recipe (OUT/probes.png).

    Shipped recipes: recipes/probes/sft-dpo.yaml and recipes/probes/extended-sft-dpo.yaml.
    """
    import pandas as pd

    # lazy: pulls in numpy
    from curator.probes.run import (
        load_probe_recipe,
        plot_probes,
        run_probes,
        squeeze_report,
    )
    from curator.probes.scoring import read_probe_table  # lazy: pulls in numpy

    out = Path(out_dir)
    if plot_only:
        dirs = sorted(p.parent for p in out.glob("*/probes.parquet"))
        if not dirs:
            raise ConfigError(f"--plot-only: no finished probe runs under {out} (*/probes.parquet)")
    else:
        if not recipes:
            raise ConfigError("give one or more probe recipes (e.g. recipes/probes/sft-dpo.yaml), or --plot-only")
        loaded = [load_probe_recipe(r, overrides) for r in recipes]  # all validated before any training
        names = [r.name for r in loaded]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"two recipes share the name {next(n for n in names if names.count(n) > 1)!r}; "
                "names label the lines and directories, so make them unique"
            )
        dirs = []
        for recipe in loaded:
            run_dir = out / recipe.name
            dirs.append(run_dir)
            if _finished(run_dir, recipe):
                click.echo(f"{recipe.name}: finished earlier ({run_dir}), skipped")
                continue
            stages = (
                s.kind + ("(y+ and y-)" if s.targets == "both" and s.kind == "sft" else "") for s in recipe.stages
            )
            click.echo(f"{recipe.name}: {' -> '.join(stages)}")
            run = run_probes(recipe, run_dir, progress=not quiet)
            for note in run.probe_set.notes:
                click.echo(f"  note: {note}")
            click.echo(f"  train {run.train_seconds:.1f}s, probe logging {run.probe_seconds:.1f}s")
    tables = [read_probe_table(d / "probes.parquet") for d in dirs]
    probe_ids = [sorted(set(t["probe_id"])) for t in tables]
    if any(p != probe_ids[0] for p in probe_ids):
        raise ConfigError(
            "the runs were probed on different prompts (data.preferences / probes.n differ); "
            "their curves cannot share a figure"
        )
    table = pd.concat(tables, ignore_index=True)
    fig_path = out / ("probes.png" if metric == "logprob_sum" else f"probes-{metric}.png")
    plot_probes(table, fig_path, metric=metric)
    report = squeeze_report(table, metric)
    click.echo(
        f"\nchange of the {metric.replace('_', ' ')} during DPO (mean over probes; argmax = "
        "teacher-forced argmax token along y+):"
    )
    fams = list(dict.fromkeys(f for r in report.values() for f in r))
    click.echo(f"  {'family':<20}" + "".join(f"{r:>24}" for r in report))
    for f in fams:
        click.echo(
            f"  {f:<20}"
            + "".join(f"{report[r][f]['change']:>+24.2f}" if f in report[r] else f"{'':>24}" for r in report)
        )
    click.echo(f"figure: {fig_path}")
