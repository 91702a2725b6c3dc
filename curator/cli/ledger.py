"""`curate ledger`: inspect, summarise and import learning-dynamics ledgers."""

from __future__ import annotations

import math

import click

from curator.errors import ConfigError


def _fmt(v: float, lo: float, hi: float) -> str:
    """A value, or its range where lazy tracking left it undetermined."""
    if not math.isnan(v):
        return f"{v:.3f}"
    return f"{lo:.3f}-{hi:.3f}"


def render_summary(ledger, p: float | None = None) -> str:
    """The per-checkpoint table printed by `curate premem` and `curate ledger show`."""
    from curator.dynamics.metrics import summary  # lazy: pulls in numpy, pandas

    s = summary(ledger, p)
    p_used = ledger.p if p is None else p
    head = ["checkpoint", "step", "epoch", "PreMemAcc", "train acc", "memorized", "mean ppl", "samples"]
    rows = []
    for cp, r in s.iterrows():
        rows.append(
            [
                str(cp),
                str(int(r.step)),
                f"{r.epoch:.2f}",
                _fmt(r.premem_acc, r.premem_acc_lo, r.premem_acc_hi),
                _fmt(r.train_acc, r.train_acc_lo, r.train_acc_hi),
                f"{r.fraction_memorized:.3f}",
                f"{r.mean_perplexity:.4f}",
                str(int(r.samples_drawn)),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    n_ex = len(ledger.example_ids)
    mode = ", deferred lazy" if ledger.meta.get("defer") else ", lazy" if ledger.meta.get("lazy") else ""
    lines = [
        f"{n_ex} examples, {len(s)} checkpoints, p={p_used:g}, k={ledger.k}{mode}",
        line(head),
        line(["-" * w for w in widths]),
    ]
    lines += [line(r) for r in rows]
    if s["premem_acc"].isna().any() or s["train_acc"].isna().any():
        lines.append(
            "a-b: range where lazy tracking skipped samples that cannot change the final "
            "PreMemAcc (use --full for complete curves)"
        )
    return "\n".join(lines)


@click.group()
def ledger():
    """Inspect, summarise and import learning-dynamics ledgers (docs/LEDGER.md)."""


@ledger.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--p", "p", type=float, default=None, help="Memorization threshold (default: the one recorded).")
@click.option(
    "--csv", "csv_out", type=click.Path(dir_okay=False), default=None, help="Also write the summary table as CSV."
)
def show(file, p, csv_out):
    """Per-checkpoint summary of a ledger FILE: PreMemAcc, train accuracy, fraction memorized."""
    from curator.dynamics.ledger import read_ledger  # lazy: pulls in numpy, pandas
    from curator.dynamics.metrics import summary  # lazy: pulls in numpy, pandas

    led = read_ledger(file)
    click.echo(render_summary(led, p))
    if csv_out:
        summary(led, p).to_csv(csv_out)
        click.echo(f"summary: {csv_out}")


@ledger.command(name="import")
@click.argument("source", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--k", "k", type=int, default=None, help="Samples per cell, when the input gives acc or no n_samples.")
@click.option("--p", "p", type=float, default=1.105, show_default=True, help="Memorization threshold recorded.")
@click.option("--drop-nan", is_flag=True, help="Drop examples with NaN perplexities instead of refusing the input.")
@click.option("--model", default=None, help="Model name to record in the ledger metadata.")
def import_(source, out, k, p, drop_nan, model):
    """Build a ledger OUT (.parquet) from another trainer's SOURCE (.npz arrays or a long table)."""
    from curator.analysis.imports import import_ledger  # lazy: pulls in numpy, pandas

    if not 1 < p < math.inf:
        raise ConfigError(f"--p must be a finite number > 1 (perplexity is >= 1 always), got {p}")
    meta = {"model": model} if model else {}
    led = import_ledger(source, k=k, p=p, drop_nan=drop_nan, **meta)
    # everything that can fail runs before OUT is touched; the write itself is atomic
    table = render_summary(led)
    path = led.to_parquet(out)
    dropped = led.meta.get("import_dropped")
    if dropped:
        click.echo(f"dropped {len(dropped)} example(s) with NaN perplexities")
    click.echo(table)
    click.echo(f"ledger: {path}")
