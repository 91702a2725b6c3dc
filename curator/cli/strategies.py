"""`curate strategies`: every available strategy with its description, signals and parameters."""

from __future__ import annotations

import json

import click


@click.command("strategies")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def strategies(as_json: bool) -> None:
    """List selection strategies (built-in, entry-point plugins), their signals and parameters."""
    from curator.strategy import describe_strategies  # lazy: pulls in numpy

    rows = describe_strategies()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']}  —  {r['description']}")
        click.echo(f"    needs:      {', '.join(r['needs']) or '(nothing)'}")
        params = ", ".join(f"{k}={v}" for k, v in r["parameters"].items()) or "(none)"
        click.echo(f"    parameters: {params}")
    click.echo(
        "\nUse one in a recipe as `strategies: [{name: NAME, params: {...}}]`; a plugin's "
        "'package.module:Class' path works as a NAME too."
    )
