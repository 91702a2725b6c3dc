"""`curate run` and `curate validate`."""

from __future__ import annotations

import click


def _load(recipe, overrides):
    from curator.recipes import load_recipe

    return load_recipe(recipe, overrides)


@click.command()
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set loop.rounds=2 (repeatable; CLI > YAML > defaults).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--seeds", help="Run once per seed, e.g. 0,1,2,3,4 (each in seed-<n>/), and compare with "
              "intervals over seeds; same as --set 'seeds=[0,1,2,3,4]'.")
def run(recipe, overrides, quiet, seeds):
    """Run the active curation loop from RECIPE (a path or a shipped recipe name).

    With no RECIPE, runs the embedded CPU demo (recipes/demo.yaml). Rerunning the same command
    after an interruption resumes after the last finished round.
    """
    from curator.recipes import validate_recipe
    from curator.run import run_recipe

    if seeds:
        overrides = (*overrides, f"seeds=[{seeds}]")
    r = _load(recipe, overrides)
    for note in validate_recipe(r):
        click.echo(f"note: {note}")
    click.echo(f"recipe {r.name!r}: {len(r.strategies)} strateg{'y' if len(r.strategies) == 1 else 'ies'} "
               f"({', '.join(s.run_name for s in r.strategies)}), {r.loop.rounds} rounds, model {r.model.name}; "
               f"run dir {r.run_dir}")
    if r.seeds:
        from curator.seeds import run_seeds

        res = run_seeds(r, progress=not quiet, echo=click.echo)
        click.echo(f"\n{res.compare_table}\ncurves: {res.curves_png}\n"
                   f"done: {len(res.seeds)} seeds in {res.seconds:.0f}s; per-seed runs and MLflow "
                   f"stores under {res.run_dir}/seed-<n>/")
        return
    summary = run_recipe(r, progress=not quiet, echo=click.echo)
    if summary.compare_table:
        click.echo("")
        click.echo(summary.compare_table)
    for name, s in summary.strategies.items():
        if s.get("stopped_reason"):
            click.echo(f"note: {name} stopped early: {s['stopped_reason']}")
    if summary.curves_png:
        click.echo(f"curves: {summary.curves_png}")
    click.echo(f"MLflow: mlflow ui --backend-store-uri {summary.tracking_uri}  "
               f"(experiment {summary.experiment!r})")


@click.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--show", is_flag=True, help="Print the resolved recipe as YAML.")
def validate(recipe, overrides, show):
    """Validate RECIPE (types, keys, strategies and their parameters) without loading any model."""
    from curator.recipes import validate_recipe

    r = _load(recipe, overrides)
    notes = validate_recipe(r)
    if show:
        click.echo(r.to_yaml())
    for note in notes:
        click.echo(f"note: {note}")
    n = len(r.strategies)
    click.echo(f"ok: {recipe} — {n} strateg{'y' if n == 1 else 'ies'}, {r.loop.rounds} rounds, model {r.model.name}")
