"""`curate compare`."""

from __future__ import annotations

import click

from curator.errors import CuratorError
from curator.tracking.mlflow_store import uri_problem


@click.command()
@click.argument("run_dir", required=False, type=click.Path())
@click.option("--tracking-uri", help="Read runs from this MLflow store instead of a run directory.")
@click.option("--experiment", help="MLflow experiment (the recipe name); needed with --tracking-uri.")
@click.option("--baseline", default="iid", show_default=True, help="Strategy the efficiency is measured against.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    help="Where to write curves.png and compare.md (default: the run directory, or the current directory for MLflow).",
)
def compare(run_dir, tracking_uri, experiment, baseline, out_dir):
    """Data-efficiency curves (PNG) and ratio table (Markdown) for the strategies of one recipe.

    Reads a run directory (RUN_DIR) or an MLflow store (--tracking-uri with --experiment).
    """
    from curator.tracking.compare import compare_mlflow, compare_run_dir  # lazy: pulls in numpy

    if tracking_uri:
        if not experiment:
            raise CuratorError("--tracking-uri needs --experiment NAME (the recipe's name)")

        if uri_problem(tracking_uri):
            raise CuratorError(f"--tracking-uri: {uri_problem(tracking_uri)}")
        res = compare_mlflow(tracking_uri, experiment, baseline=baseline, out_dir=out_dir or ".")
    elif run_dir:
        res = compare_run_dir(run_dir, baseline=baseline, out_dir=out_dir)
    else:
        raise CuratorError("give a RUN_DIR, or --tracking-uri and --experiment")
    click.echo(res.table)
    click.echo(f"curves: {res.png}\ntable: {res.table_path}")
