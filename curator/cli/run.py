"""`curate run` and `curate validate`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from curator.console import echo as _echo
from curator.console import is_verbose
from curator.distributed import is_main_process
from curator.rounds import COMPARE_TABLE

if TYPE_CHECKING:
    from curator.run import RunSummary


def _load(recipe, overrides):
    from curator.recipes import load_recipe  # lazy: pulls in numpy, yaml

    return load_recipe(recipe, overrides)


@click.command()
@click.argument("recipe", required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set loop.rounds=2 (repeatable; CLI > YAML > defaults).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--seeds",
    help="Run once per seed, e.g. 0,1,2,3,4 (each in seed-<n>/), and compare with "
    "intervals over seeds; same as --set 'seeds=[0,1,2,3,4]'.",
)
def run(recipe, overrides, quiet, seeds):
    """Run the active curation loop from RECIPE (a path or a shipped recipe name).

    With no RECIPE, runs the embedded CPU demo (recipes/demo.yaml). Rerunning the same command
    after an interruption resumes after the last finished round.
    """
    from curator.recipes import validate_recipe  # lazy: pulls in numpy, yaml
    from curator.run import run_recipe  # lazy: pulls in numpy, yaml

    if seeds:
        overrides = (*overrides, f"seeds=[{seeds}]")
    # under `accelerate launch` every rank runs this command; one speaks
    echo = _echo if is_main_process() else (lambda *a, **k: None)
    r = _load(recipe, overrides)
    for note in validate_recipe(r):
        echo(f"note: {note}")
    n = len(r.strategies)
    echo(
        f"recipe {r.name!r}: {n} strateg{'y' if n == 1 else 'ies'} ({', '.join(s.run_name for s in r.strategies)}), "
        f"{r.loop.rounds} round{'' if r.loop.rounds == 1 else 's'}, model {r.model.name}; run dir {r.run_dir}"
    )
    if r.seeds:
        from curator.seeds import run_seeds  # lazy: pulls in numpy, yaml

        res = run_seeds(r, progress=not quiet, echo=echo)
        echo(
            f"\n{res.compare_table}\ncurves: {res.curves_png}\n"
            f"done: {len(res.seeds)} seeds in {res.seconds:.0f}s; per-seed runs under {res.run_dir}/seed-<n>/\n"
            f"MLflow: mlflow ui --backend-store-uri {res.tracking_uri}  (experiment {r.experiment!r}, "
            "one run per strategy and seed)"
        )
        return
    summary = run_recipe(r, progress=not quiet, echo=echo)
    if summary.compare_table and is_verbose():
        echo("")
        echo(summary.compare_table)
    echo("")
    echo(final_summary(summary))


def final_summary(summary: RunSummary) -> str:
    """What a run ended with, readable in five seconds: one row per strategy, then where to look."""
    rows = []
    for name, s in summary.strategies.items():
        final = s.get("final") or {}
        acc, premem = final.get("test_accuracy"), final.get("premem_acc")
        rows.append(
            (
                name,
                str(final.get("n_train", "-")),
                f"{acc:.3f}" if acc is not None else "-",
                f"{premem:.3f}" if premem is not None else "-",
                f"stopped early: {s['stopped_reason']}" if s.get("stopped_reason") else "",
            )
        )
    best = max((float(r[2]) for r in rows if r[2] != "-"), default=None)
    n_best = sum(1 for r in rows if r[2] != "-" and float(r[2]) == best)  # a tie marks nobody best
    head = ("strategy", "examples", "test acc", "PreMemAcc", "")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]

    def line(row: tuple[str, ...], note: str) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:])]
        return ("  " + "  ".join(cells) + (f"  {note}" if note else "")).rstrip()

    out = [line(head, "")]
    for row in rows:
        top = n_best == 1 and len(rows) > 1 and row[2] != "-" and float(row[2]) == best
        out.append(line(row, "  ".join(x for x in ("best" if top else "", row[4]) if x)))
    table = summary.run_dir / COMPARE_TABLE
    if summary.curves_png:
        out.append(f"curves: {summary.curves_png}")
    if table.exists():
        out.append(f"table:  {table}  (efficiency vs iid{'' if is_verbose() else '; printed with curate --verbose'})")
    out.append(f"MLflow: mlflow ui --backend-store-uri {summary.tracking_uri}  (experiment {summary.experiment!r})")
    return "\n".join(out)


@click.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--show", is_flag=True, help="Print the resolved recipe as YAML.")
def validate(recipe, overrides, show):
    """Validate RECIPE (types, keys, strategies and their parameters) without loading any model."""
    from curator.recipes import validate_recipe  # lazy: pulls in numpy, yaml

    r = _load(recipe, overrides)
    notes = validate_recipe(r)
    if show:
        click.echo(r.to_yaml())
    for note in notes:
        click.echo(f"note: {note}")
    n = len(r.strategies)
    click.echo(f"ok: {recipe} — {n} strateg{'y' if n == 1 else 'ies'}, {r.loop.rounds} rounds, model {r.model.name}")
