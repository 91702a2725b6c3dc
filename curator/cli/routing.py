"""`curate routing`: the reproducible validation run of the MoE routing monitors (docs/ROUTING.md)."""

from __future__ import annotations

import click

from curator.cli.options import SEED, in_range


@click.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="runs/routing",
    show_default=True,
    help="Run directory: ledger.parquet, checkpoints.csv, routing.csv, routing.png, report.md.",
)
@click.option(
    "--n-train", type=int, callback=in_range(1), default=64, show_default=True, help="Synthetic training problems."
)
@click.option(
    "--n-test", type=int, callback=in_range(1), default=64, show_default=True, help="Held-out synthetic test problems."
)
@click.option("--epochs", type=int, callback=in_range(1), default=100, show_default=True)
@click.option(
    "--checkpoint-every", type=int, default=40, show_default=True, help="Optimizer steps between checkpoints."
)
@click.option(
    "--cutoff",
    type=float,
    default=0.8,
    show_default=True,
    help="Cumulative routing weight of the experts kept per layer, in (0, 1].",
)
@click.option(
    "--epsilon",
    type=float,
    default=0.5,
    show_default=True,
    help="Memorization rule: per-sample loss (nats) at most this from some checkpoint on ...",
)
@click.option("--delta", type=float, default=0.1, show_default=True, help="... and within this of its final loss.")
@click.option("--all-samples", is_flag=True, help="Metrics over all samples, not only the memorized ones.")
@click.option("--seed", type=int, default=0, show_default=True, callback=SEED)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def routing(out_dir, n_train, n_test, epochs, checkpoint_every, cutoff, epsilon, delta, all_samples, seed, quiet):
    """Train a small MoE from scratch on synthetic problems; track pathway distance and consistency.

    Reports whether they track test accuracy across checkpoints better than the training loss does
    (Li, Fan & Zhou, arXiv 2506.21551). CPU only: about 20 minutes on a shared
    2-core machine (one torch thread).
    """
    import torch

    # lazy: `curate --help` stays free of torch and pandas
    from curator.drivers.routing_validation import ValidationSettings, routing_validation
    from curator.dynamics.routing import RoutingSettings  # lazy: pandas

    torch.set_num_threads(1)  # the reference run; results are reproducible with one thread
    rs = RoutingSettings(cutoff=cutoff, epsilon=epsilon, delta=delta, memorized_only=not all_samples, seed=seed)
    vs = ValidationSettings(
        n_train=n_train, n_test=n_test, epochs=epochs, checkpoint_every=checkpoint_every, seed=seed, routing=rs
    )
    res = routing_validation(out_dir, vs, progress=not quiet)
    corr = res["correlations"]
    click.echo(corr.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"wrote {res['dir']}/report.md and routing.png")
