"""`curate export`: a run's selected training set as a `datasets` dataset TRL trains on."""

from __future__ import annotations

import click

from curator.cli.options import in_range
from curator.export import export_selection


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--out",
    default=None,
    type=click.Path(),
    help="Output: FILE.jsonl, FILE.parquet, or a directory (Dataset.save_to_disk).",
)
@click.option("--strategy", default=None, help="Which strategy's run (its label); needed when the run has several.")
@click.option(
    "--round",
    "round_",
    type=int,
    default=None,
    callback=in_range(0),
    help="Which round's selection (default: the last finished).",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["jsonl", "parquet", "disk"]),
    default=None,
    help="Output format (default: from --out's suffix; no suffix: save_to_disk).",
)
@click.option("--chat", is_flag=True, help="A 'messages' column (user/assistant turns) instead of prompt/completion.")
@click.option("--only-new", is_flag=True, help="Only the examples this round selected, not the whole training set.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option(
    "--push-to-hub",
    "push_to_hub",
    default=None,
    metavar="REPO_ID",
    help="Also push the dataset to the Hugging Face hub (needs `huggingface-cli login`).",
)
@click.option("--public", is_flag=True, help="With --push-to-hub: make the hub dataset public (default private).")
def export(run_dir, out, strategy, round_, format_, chat, only_new, overwrite, push_to_hub, public):
    """Export the training set a round of a `curate run` selected (S_{r+1}) as a dataset.

    Columns: prompt/completion (or messages with --chat), id, question, solution, answer, and per
    example premem_acc (at the round's final checkpoint; NaN if not yet trained on), score (the
    selection score) and selected_round (-1: the seed set). Train on it with `trl sft` or SFTTrainer.
    """

    res = export_selection(
        run_dir,
        out,
        strategy=strategy,
        round=round_,
        format=format_,
        chat=chat,
        only_new=only_new,
        overwrite=overwrite,
        push_to_hub=push_to_hub,
        private=not public,
    )
    where = " and ".join(
        x for x in (str(res.path) if res.path else None, f"hub dataset {res.hub_repo}" if res.hub_repo else None) if x
    )
    click.echo(f"{res.n_examples} examples of {res.strategy}, round {res.round} -> {where}")
