"""`curate premem`: finetune with dynamics tracking and print the PreMemAcc summary."""

from __future__ import annotations

import os
from pathlib import Path

import click

from curator.cli.options import SEED


def load_training_data(source: str, n: int | None):
    """Examples for `curate premem`: the first ``n`` of any `load_examples` source.

    A ``synthetic`` source without its own ``n=`` makes 64 problems unless ``n`` is given.
    """
    from curator.data.loaders import load_examples
    from curator.errors import ConfigError

    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if n is None and source.partition("?")[0].partition(":")[0] == "synthetic" and "n=" not in source:
        n = 64
    return load_examples(source, limit=n)


@click.command()
@click.option(
    "--ledger",
    "ledger_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Summarise an existing ledger instead of training.",
)
@click.option("--model", default=None, help="Model spec: hub id, local dir, .gguf, smollm2-135m-instruct, tiny-random.")
@click.option(
    "--data",
    default=None,
    help="Training data: 'synthetic[:preset][?key=value&...]', a .jsonl/.json/.parquet/.csv file, or a hub dataset.",
)
@click.option("--n", type=int, default=None, help="Use the first N examples (synthetic default: 64).")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option(
    "--lr", type=float, default=None, help="Learning rate (default: 1e-3 with LoRA, 1e-5 full; 1e-3 for tiny-random)."
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Training micro-batch size.")
@click.option(
    "--checkpoint-every",
    default="epoch",
    show_default=True,
    help="'epoch' or a number of optimizer steps between checkpoints.",
)
@click.option("--samples", "k", type=int, default=5, show_default=True, help="Samples per example per checkpoint (k).")
@click.option("--p", "p", type=float, default=None, help="Memorization threshold on target perplexity (default 1.105).")
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--top-p", type=float, default=0.95, show_default=True)
@click.option("--max-new-tokens", type=int, default=256, show_default=True)
@click.option("--full", is_flag=True, help="Sample every example at every checkpoint (complete train-accuracy curves).")
@click.option(
    "--defer",
    is_flag=True,
    help="Deferred lazy tracking: sample earlier checkpoints at the end, only for "
    "examples memorized there (same final PreMemAcc, fewer samples; keeps a CPU copy of the trained "
    "weights per checkpoint).",
)
@click.option("--lora/--no-lora", default=False, show_default=True, help="Train LoRA adapters instead of all weights.")
@click.option(
    "--chat/--no-chat", default=False, show_default=True, help="Wrap prompts in the tokenizer's chat template."
)
@click.option("--grader", default="auto", show_default=True, help="Answer grader: gsm8k, math, numeric, auto.")
@click.option(
    "--allow-bad-references", is_flag=True, help="Track even if some reference solutions do not grade correct."
)
@click.option("--sample-batch-size", type=int, default=32, show_default=True, help="Prompts per sampler batch.")
@click.option("--seed", type=int, default=0, show_default=True, callback=SEED)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/premem", show_default=True)
@click.option(
    "--save-model",
    is_flag=True,
    help="Also save the finetuned model (the adapter with --lora) to "
    "OUT/model, e.g. for `curate robustness --model OUT/model`.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def premem(
    ledger_file,
    model,
    data,
    n,
    epochs,
    lr,
    batch_size,
    checkpoint_every,
    k,
    p,
    temperature,
    top_p,
    max_new_tokens,
    full,
    defer,
    lora,
    chat,
    grader,
    allow_bad_references,
    sample_batch_size,
    seed,
    out_dir,
    save_model,
    quiet,
):
    """Finetune MODEL on DATA with learning-dynamics tracking; write the ledger and PreMemAcc summary.

    With --ledger FILE, print the summary of an existing ledger (optionally at another --p).
    Every setting, the data and its reference answers are checked before any model loads.
    """
    from curator.cli.ledger import render_summary
    from curator.errors import ConfigError

    if ledger_file:
        from curator.dynamics.ledger import read_ledger

        click.echo(render_summary(read_ledger(ledger_file), p))
        return
    if not model or not data:
        raise ConfigError("give --model and --data to train with tracking, or --ledger FILE to summarise a ledger")

    from curator.data.format import PromptFormat
    from curator.data.grading import get_grader
    from curator.dynamics.tracker import check_premem_settings, track_premem, validate_premem
    from curator.sampling.base import SamplingParams
    from curator.training.settings import TrainSettings

    p = 1.105 if p is None else p
    problems = check_premem_settings(1, k, p)
    if full and defer:
        problems.append("--full and --defer contradict each other (--defer is a lazy mode); drop one")
    ce = int(checkpoint_every) if str(checkpoint_every).isdigit() else checkpoint_every
    if lr is None:
        lr = 1e-3 if (lora or model == "tiny-random") else 1e-5
    try:
        settings = TrainSettings(epochs=epochs, learning_rate=lr, batch_size=batch_size, checkpoint_every=ce, seed=seed)
    except ConfigError as e:
        problems += e.problems
        settings = None
    fmt = PromptFormat(chat=chat)
    try:
        params = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=fmt.stop, seed=seed
        )
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    g = get_grader(grader)
    examples = load_training_data(data, n)
    n_ckpt = validate_premem(
        examples, g, fmt=fmt, train_settings=settings, k=k, p=p, allow_bad_references=allow_bad_references
    )
    if os.environ.get("RANK", "0") == "0":  # once, not per process, under accelerate launch
        click.echo(
            f"{len(examples)} examples from {data}; {epochs} epochs, {n_ckpt} checkpoints; k={k}, "
            f"p={p:g}, {'full' if full else 'deferred lazy' if defer else 'lazy'} tracking"
        )

    from curator import distributed
    from curator.models import load_model

    loaded = load_model(model)
    lora_settings = None
    if lora:
        from curator.models import LoraSettings

        lora_settings = LoraSettings()
    ledger = track_premem(
        loaded,
        examples,
        fmt=fmt,
        grader=g,
        train_settings=settings,
        k=k,
        params=params,
        p=p,
        lazy=not full,
        defer=defer,
        out_dir=out_dir,
        progress=not quiet,
        allow_bad_references=allow_bad_references,
        sample_batch_size=sample_batch_size,
        lora=lora_settings,
        seed=seed,
    )
    if not distributed.is_main_process():  # every rank has the ledger; one prints and saves
        return
    click.echo(render_summary(ledger))
    click.echo(f"ledger: {Path(out_dir) / 'ledger.parquet'}  summary: {Path(out_dir) / 'summary.csv'}")
    if save_model:
        from curator.models import save_model as save

        where = save(loaded, Path(out_dir) / "model")
        base = f" --base {model}" if lora else ""
        click.echo(
            f"model: {where}  (robustness: curate robustness --model {where}{base} --ledger "
            f"{Path(out_dir) / 'ledger.parquet'} --data '{data}')"
        )
