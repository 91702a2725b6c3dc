"""`curate data`: preview datasets and write synthetic reasoning tasks."""

from __future__ import annotations

import time

import click

from curator.cli.options import SEED, in_range
from curator.data.grading import get_grader, grade_references
from curator.data.loaders import load_examples, save_examples
from curator.data.synthetic import synthetic_task
from curator.errors import ConfigError


@click.group("data")
def data():
    """Preview datasets and write synthetic reasoning tasks."""


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


@data.command("preview")
@click.argument("source")
@click.option("--n", "n", default=5, show_default=True, type=click.IntRange(min=0), help="How many examples to print.")
@click.option("--config", default=None, help="Hub dataset configuration (e.g. 'main' for openai/gsm8k).")
@click.option("--split", default="train", show_default=True, help="Hub dataset split.")
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="NAME=COLUMN",
    help="Map question/solution/answer to a column, e.g. --field question=prompt.",
)
@click.option("--id-field", default=None, help="Column holding stable ids.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Load only the first N rows.")
@click.option("--grader", default="auto", show_default=True, help="gsm8k, math, numeric or auto.")
@click.option(
    "--lenient", is_flag=True, help="Drop rows with missing fields or unparseable answers instead of failing."
)
def preview(source, n, config, split, fields, id_field, limit, grader, lenient):
    """Print a few examples of SOURCE with their graded reference answers.

    SOURCE is a .jsonl/.json/.parquet/.csv file, a hub id (needs network), or
    synthetic[:easy|medium|hard][?n=..&seed=..].
    """

    g = get_grader(grader)  # fail on a bad grader name before loading anything
    examples = load_examples(
        source,
        config=config,
        split=split,
        fields=list(fields) or None,
        limit=limit,
        id_field=id_field,
        strict=not lenient,
    )
    for ex in examples[:n]:
        pred = g.extract(ex.solution)
        verdict = "correct" if pred is not None and g.equivalent(pred, ex.answer) else "WRONG"
        click.echo(f"=== {ex.id}")
        click.echo("question:")
        click.echo(_indent(ex.question))
        click.echo("solution:")
        click.echo(_indent(ex.solution))
        click.echo(f"answer: {ex.answer}   graded: {pred!s} -> {verdict}")
    report = grade_references(examples, g)
    click.echo(f"{len(examples)} examples; {report}")


def _parse_steps(text: str | None) -> dict:
    if not text:
        return {}
    lo, sep, hi = text.partition("-")
    try:
        lo_i = int(lo)
        hi_i = int(hi) if sep else lo_i
    except ValueError:
        raise ConfigError(f"--steps {text!r} must be N or MIN-MAX, e.g. 2-4") from None
    return {"min_steps": lo_i, "max_steps": hi_i}


# everything is built in memory before the file is written (one atomic write): at ~1 KB a problem
# and thousands of problems a second, a million is a few minutes and ~1 GB; larger is refused
MAX_SYNTH = 1_000_000


@data.command("synth")
@click.option(
    "--n",
    "n",
    required=True,
    type=int,
    callback=in_range(1, MAX_SYNTH, "all problems are built in memory before the one write"),
    help=f"How many problems (at most {MAX_SYNTH:,}).",
)
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Output .jsonl file.")
@click.option("--preset", default="easy", show_default=True, help="easy, medium or hard.")
@click.option("--seed", default=0, show_default=True, type=int, callback=SEED)
@click.option("--steps", default=None, metavar="N|MIN-MAX", help="Arithmetic steps per problem.")
@click.option("--max-operand", default=None, type=int, callback=in_range(1), help="Largest number drawn (magnitude).")
@click.option("--distractors", default=None, type=int, callback=in_range(0), help="Irrelevant sentences per question.")
@click.option("--traces", "n_traces", default=None, type=int, callback=in_range(1), help="Solution traces per problem.")
@click.option("--skills", default=None, help="Comma-separated skills (default: all).")
def synth(n, out, preset, seed, steps, max_operand, distractors, n_traces, skills):
    """Write a synthetic GSM8K-format dataset (id, question, solution, answer, meta) as JSON lines."""

    if not out.endswith(".jsonl"):
        raise ConfigError(f"--out {out!r} must be a .jsonl file")
    overrides = _parse_steps(steps)
    for key, value in (
        ("max_operand", max_operand),
        ("distractors", distractors),
        ("n_traces", n_traces),
        ("skills", skills),
    ):
        if value is not None:
            overrides[key] = value
    task = synthetic_task(preset, **overrides)
    t0 = time.perf_counter()
    examples = task.generate(n, seed=seed)
    dt = time.perf_counter() - t0
    save_examples(examples, out)
    click.echo(f"wrote {len(examples)} examples to {out} ({len(examples) / max(dt, 1e-9):.0f} problems/s)")
