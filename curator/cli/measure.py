"""`curate measure`: a dynamics ledger from checkpoints any trainer saved."""

from __future__ import annotations

from pathlib import Path

import click

from curator import distributed
from curator.cli.ledger import render_summary
from curator.cli.options import SEED
from curator.cli.premem import DYNAMICS_FLAGS, DYNAMICS_OPTIONS, load_training_data, settings_options
from curator.data.format import PromptFormat
from curator.dynamics.settings import DynamicsSettings, MeasureSettings
from curator.errors import ConfigError
from curator.sampling.base import SamplingParams


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option(
    "--data",
    required=True,
    help="The training examples to measure: 'synthetic[:preset][?...]', a .jsonl/.json/.parquet/.csv file, "
    "a save_to_disk directory, or a hub dataset (prompt/completion and messages columns work).",
)
@click.option("--n", type=int, default=None, help="Use the first N examples (synthetic default: 64).")
@click.option(
    "--base",
    default=None,
    help="Base model for peft adapter checkpoints (default: the one the adapter "
    "records); for full checkpoints saved without a tokenizer, where the tokenizer comes from.",
)
@settings_options(DynamicsSettings, ("backend", *DYNAMICS_OPTIONS))
@click.option("--full", is_flag=True, help="Sample every example at every checkpoint (complete train-accuracy curves).")
@click.option(
    "--chat/--no-chat", default=False, show_default=True, help="Wrap prompts in the tokenizer's chat template."
)
@click.option("--grader", default="auto", show_default=True, help="Answer grader: gsm8k, math, numeric, auto.")
@settings_options(DynamicsSettings, ("batch_size",), DYNAMICS_FLAGS)
@click.option(
    "--step",
    type=click.IntRange(min=0),
    default=None,
    help="The training step of a single model directory (0: the untrained model; a plain model "
    "directory without trainer state is step 0 anyway).",
)
@click.option("--seed", type=int, default=0, show_default=True, callback=SEED, help="Sampling seed.")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on capable CUDA, else fp32).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default="runs/measure/ledger.parquet", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def measure(
    checkpoints,
    data,
    n,
    base,
    backend,
    samples,
    p,
    temperature,
    top_p,
    max_new_tokens,
    full,
    chat,
    grader,
    sample_batch_size,
    step,
    seed,
    dtype,
    device,
    out,
    quiet,
):
    """Measure the learning-dynamics ledger of DATA over saved CHECKPOINTS.

    CHECKPOINTS are checkpoint directories or run directories holding checkpoint-* subdirectories,
    as transformers' Trainer, TRL or `curate premem --save-model` write them: full models, or peft
    adapters applied to --base. A plain model directory (e.g. the base model) is step 0, the first
    point of every curve. The ledger is what `curate premem --ledger`, `curate predict` and
    the strategies read.
    """
    from curator.dynamics.tracker import check_premem_settings  # lazy: pulls in pandas
    from curator.measure import CheckpointLoader, find_checkpoints, measure_checkpoints  # lazy: pulls in pandas

    k = samples
    problems = check_premem_settings(1, k, p)
    fmt = PromptFormat(chat=chat)
    try:
        params = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=fmt.stop, seed=seed
        )
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    ckpts = find_checkpoints(checkpoints, step=step)  # a directory without checkpoints fails before data loads
    examples = load_training_data(data, n)
    if distributed.is_main_process():  # once, not per process, under accelerate launch
        click.echo(
            f"{len(examples)} examples from {data}; {len(ckpts)} checkpoints "
            f"(steps {', '.join(str(c.step) for c in ckpts)}); k={k}, p={p:g}, {'full' if full else 'lazy'} tracking"
        )
    ledger = measure_checkpoints(
        ckpts,
        examples,
        measure=MeasureSettings(k=k, params=params, p=p, lazy=not full),
        fmt=fmt,
        grader=grader,
        loader=CheckpointLoader(base, dtype=dtype, device=device),
        backend=backend,
        batch_size=sample_batch_size,
        out=out,
        progress=not quiet,
    )
    if not distributed.is_main_process():  # every rank has the ledger; one prints
        return
    click.echo(render_summary(ledger))
    click.echo(f"ledger: {Path(out)}")
