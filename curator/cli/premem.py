"""`curate premem`: finetune with dynamics tracking and print the PreMemAcc summary."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from curator import distributed
from curator.cli.ledger import render_summary
from curator.cli.options import SEED
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.loaders import load_examples
from curator.dynamics.settings import DynamicsSettings, MeasureSettings
from curator.errors import ConfigError
from curator.models import LoraSettings, load_model
from curator.models import save_model as save
from curator.sampling.base import SamplingParams
from curator.sampling.providers import make_provider
from curator.training.settings import TrainSettings


def load_training_data(source: str, n: int | None):
    """Examples for `curate premem`: the first ``n`` of any `load_examples` source.

    A ``synthetic`` source without its own ``n=`` makes 64 problems unless ``n`` is given.
    """

    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if n is None and source.partition("?")[0].partition(":")[0] == "synthetic" and "n=" not in source:
        n = 64
    return load_examples(source, limit=n)


def settings_options(
    cls: type, names: Sequence[str], flags: dict[str, tuple[str, str]] | None = None, **defaults: Any
) -> Callable[[Callable], Callable]:
    """click options for the ``names`` fields of the settings dataclass ``cls``, in that order:
    flag ``--field-name`` and parameter ``field_name`` (or ``flags[name] = (flag, parameter)``),
    the field's default (or ``defaults[name]``) and its ``help``; a bool field is a flag. So
    every such option reads as its settings field does (as curator.training.launch does for
    `TrainSettings`)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}

    def decorate(command: Callable) -> Callable:
        for name in reversed(names):
            f = by_name[name]
            flag, dest = (flags or {}).get(name, ("--" + name.replace("_", "-"), name))
            default = defaults.get(name, f.default)
            help_text = f.metadata.get("help", "")
            tp = hints[name]
            if tp is bool:
                command = click.option(flag, dest, is_flag=True, default=default, help=help_text)(command)
            else:
                kind = tp if tp in (int, float, str) else str
                command = click.option(
                    flag, dest, type=kind, default=default, show_default=default is not None, help=help_text
                )(command)
        return command

    return decorate


# the options of `curate premem` and `curate measure` that are `DynamicsSettings` fields
DYNAMICS_OPTIONS = ("samples", "p", "temperature", "top_p", "max_new_tokens")
DYNAMICS_FLAGS = {"batch_size": ("--sample-batch-size", "sample_batch_size")}


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
@settings_options(DynamicsSettings, DYNAMICS_OPTIONS, p=None)
@click.option("--full", is_flag=True, help="Sample every example at every checkpoint (complete train-accuracy curves).")
@settings_options(DynamicsSettings, ("defer",))
@click.option("--lora/--no-lora", default=False, show_default=True, help="Train LoRA adapters instead of all weights.")
@click.option(
    "--chat/--no-chat", default=False, show_default=True, help="Wrap prompts in the tokenizer's chat template."
)
@click.option("--grader", default="auto", show_default=True, help="Answer grader: gsm8k, math, numeric, auto.")
@click.option(
    "--allow-bad-references", is_flag=True, help="Track even if some reference solutions do not grade correct."
)
@settings_options(DynamicsSettings, ("batch_size",), DYNAMICS_FLAGS)
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
    samples,
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

    if ledger_file:
        from curator.dynamics.ledger import read_ledger  # lazy: pulls in pandas

        click.echo(render_summary(read_ledger(ledger_file), p))
        return
    if not model or not data:
        raise ConfigError("give --model and --data to train with tracking, or --ledger FILE to summarise a ledger")

    from curator.dynamics.tracker import validate_premem  # lazy: pulls in pandas
    from curator.engine import track_premem  # lazy: pulls in pandas

    if lr is None:
        lr = 1e-3 if (lora or model == "tiny-random") else 1e-5
    settings, measure, fmt = _premem_settings(
        dict(epochs=epochs, learning_rate=lr, batch_size=batch_size, checkpoint_every=checkpoint_every, seed=seed),
        dict(samples=samples, p=p, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed),
        full=full,
        defer=defer,
        chat=chat,
    )
    g = get_grader(grader)
    examples = load_training_data(data, n)
    n_ckpt = validate_premem(
        examples,
        g,
        fmt=fmt,
        train_settings=settings,
        k=measure.k,
        p=measure.p,
        allow_bad_references=allow_bad_references,
    )
    if os.environ.get("RANK", "0") == "0":  # once, not per process, under accelerate launch
        click.echo(
            f"{len(examples)} examples from {data}; {epochs} epochs, {n_ckpt} checkpoints; k={measure.k}, "
            f"p={measure.p:g}, {'full' if full else 'deferred lazy' if defer else 'lazy'} tracking"
        )
    loaded = load_model(model)
    lora_settings = None
    if lora:
        lora_settings = LoraSettings()
    ledger = track_premem(
        loaded,
        examples,
        fmt=fmt,
        grader=g,
        train_settings=settings,
        measure=measure,
        provider=make_provider("hf", loaded, batch_size=sample_batch_size),
        lora=lora_settings,
        out_dir=out_dir,
        allow_bad_references=allow_bad_references,
        progress=not quiet,
    )
    if not distributed.is_main_process():  # every rank has the ledger; one prints and saves
        return
    click.echo(render_summary(ledger))
    click.echo(f"ledger: {Path(out_dir) / 'ledger.parquet'}  summary: {Path(out_dir) / 'summary.csv'}")
    if save_model:
        where = save(loaded, Path(out_dir) / "model")
        base = f" --base {model}" if lora else ""
        click.echo(
            f"model: {where}  (robustness: curate robustness --model {where}{base} --ledger "
            f"{Path(out_dir) / 'ledger.parquet'} --data '{data}')"
        )


def _premem_settings(train: dict[str, Any], sampling: dict[str, Any], *, full: bool, defer: bool, chat: bool):
    """(TrainSettings, MeasureSettings, PromptFormat) from `curate premem`'s options, with every
    problem reported at once (ConfigError) before anything loads."""
    from curator.dynamics.tracker import check_premem_settings  # lazy: pulls in pandas

    k, p = sampling.pop("samples"), sampling.pop("p")
    p = 1.105 if p is None else p
    problems = check_premem_settings(1, k, p)
    if full and defer:
        problems.append("--full and --defer contradict each other (--defer is a lazy mode); drop one")
    ce = train["checkpoint_every"]
    train["checkpoint_every"] = int(ce) if str(ce).isdigit() else ce
    settings = None
    try:
        settings = TrainSettings(**train)
    except ConfigError as e:
        problems += e.problems
    fmt = PromptFormat(chat=chat)
    params = None
    try:
        params = SamplingParams(**sampling, stop=fmt.stop)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ConfigError(problems)
    return settings, MeasureSettings(k=k, params=params, p=p, lazy=not full, defer=defer), fmt
