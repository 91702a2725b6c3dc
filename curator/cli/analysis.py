"""`curate predict`, `curate robustness` and `curate sweep`: thin wrappers over curator.analysis."""

from __future__ import annotations

from pathlib import Path

import click

from curator.cli.options import SEED, in_range
from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.loaders import load_examples
from curator.distributed import is_main_process
from curator.errors import CuratorError
from curator.models import load_model

# bootstrap resamples: below 100 the 2.5/97.5 percentiles are not a 95% interval; above the cap the
# resample index (n_boot x points) no longer fits in memory
MIN_BOOT, MAX_BOOT = 100, 100_000


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@click.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option(
    "--sweep",
    "sweep_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="A directory whose sub-directories are run directories (e.g. a sweep's output).",
)
@click.option("--mlflow-experiment", default=None, help="Read runs from this MLflow experiment's artifacts.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (with --mlflow-experiment).")
@click.option(
    "--p",
    "p",
    type=float,
    default=1.105,
    show_default=True,
    help="Memorization threshold for PreMemAcc in the metric ranking.",
)
@click.option("--p-grid", default=None, help="Comma-separated thresholds for the p sweep, e.g. 1.05,1.1,1.2.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="predict",
    show_default=True,
    help="Where report.md, the plots and the tables go.",
)
@click.option("--drop-nan", is_flag=True, help="Drop examples with NaN perplexities (reported) instead of failing.")
@click.option(
    "--n-boot",
    type=int,
    default=1000,
    show_default=True,
    callback=in_range(MIN_BOOT, MAX_BOOT, "fewer resamples make no 95% interval", zero_ok=True),
    help=f"Bootstrap resamples for the 95% intervals: 0 (no intervals) or {MIN_BOOT}-{MAX_BOOT}.",
)
def predict(run_dirs, sweep_dir, mlflow_experiment, tracking_uri, p, p_grid, out_dir, drop_nan, n_boot):
    """Fit test accuracy against PreMemAcc and the comparison metrics across RUN_DIRS.

    Each run directory holds ledger.parquet and checkpoints.csv (checkpoint, test_accuracy, and
    optionally train_loss, grad_variance, dist_from_init). See docs/ANALYSIS.md.
    """
    # lazy: pulls in numpy, pandas
    from curator.analysis.predict import find_runs, load_run, runs_from_mlflow, write_report
    from curator.analysis.predict import predict as predict_fn  # lazy: pulls in numpy, pandas

    dirs = [Path(d) for d in run_dirs]
    if sweep_dir:
        dirs += find_runs(sweep_dir)
    runs = [load_run(d, drop_nan=drop_nan) for d in dirs]
    if mlflow_experiment:
        runs += runs_from_mlflow(experiment=mlflow_experiment, tracking_uri=tracking_uri)
    if not runs:
        raise CuratorError("give run directories, --sweep DIR or --mlflow-experiment NAME")
    report = predict_fn(runs, p=p, p_grid=_floats(p_grid, "--p-grid"), n_boot=n_boot, drop_nan=drop_nan)
    paths = write_report(report, out_dir)
    rank = report.ranking()
    for _, row in rank.iterrows():
        r2 = "   –  " if row["r2"] != row["r2"] else f"{row['r2']:.3f}"
        click.echo(f"{row['label']:>24}  R² {r2}  n={int(row['n'])}  {row['note']}")
    click.echo(f"best p in the grid: {report.best_p:g}")
    for e in report.exclusions:
        click.echo(f"excluded: {e}")
    click.echo(f"report: {paths['report']}")


@click.command()
@click.option(
    "--model",
    "model_spec",
    required=True,
    help="The trained model: hub id, local dir (a LoRA adapter dir works with --base), .gguf or alias.",
)
@click.option("--base", "base_spec", default=None, help="Base model when --model is a LoRA adapter directory.")
@click.option(
    "--ledger",
    "ledger_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The ledger of that training run (PreMemAcc per example at its last checkpoint).",
)
@click.option("--data", "data_source", required=True, help="The training examples (file, hub id or synthetic:...).")
@click.option(
    "--prefix",
    "prefixes",
    multiple=True,
    help="Forced response prefix (repeatable). Default: 'First' and 'We know that'.",
)
@click.option(
    "--samples",
    "k",
    type=int,
    callback=in_range(1, 1000),
    default=4,
    show_default=True,
    help="Samples per query and condition.",
)
@click.option("--p", "p", type=float, default=None, help="Memorization threshold (default: the ledger's).")
@click.option("--grader", default=None, help="Answer grader (default: the ledger's, else auto).")
@click.option(
    "--temperature",
    type=float,
    callback=in_range(0),
    default=None,
    help="Sampling temperature (default: the ledger's).",
)
@click.option(
    "--max-new-tokens", type=int, callback=in_range(1), default=None, help="Longest completion (default: the ledger's)."
)
@click.option(
    "--batch-size", type=int, callback=in_range(1), default=32, show_default=True, help="Prompts per sampling batch."
)
@click.option("--seed", type=int, default=0, show_default=True, callback=SEED)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="robustness", show_default=True)
def robustness(
    model_spec,
    base_spec,
    ledger_path,
    data_source,
    prefixes,
    k,
    p,
    grader,
    temperature,
    max_new_tokens,
    batch_size,
    seed,
    out_dir,
):
    """Accuracy on training queries when the response must begin with a prefix, per PreMemAcc bucket."""
    import dataclasses

    from curator.analysis.robustness import DEFAULT_PREFIXES, final_premem  # lazy: pulls in numpy, pandas
    from curator.analysis.robustness import robustness as robustness_fn  # lazy: pulls in numpy, pandas
    from curator.dynamics.ledger import read_ledger  # lazy: pulls in numpy, pandas
    from curator.sampling import make_sampler  # lazy: pulls in numpy
    from curator.sampling.base import SamplingParams  # lazy: pulls in numpy

    led = read_ledger(ledger_path)
    fmt_meta = led.meta.get("format")
    # read_ledger checked the metadata's types (curator/readback.py); keys of other versions are left out
    known = {f.name for f in dataclasses.fields(PromptFormat)}
    fmt_kw = {key: v for key, v in (fmt_meta or {}).items() if key in known}
    fmt = PromptFormat(**{**fmt_kw, "stop": tuple(fmt_kw.get("stop", ()))}) if fmt_meta else PromptFormat()
    samp = dict(led.meta.get("sampling") or {})
    samp = {key: v for key, v in samp.items() if key in {f.name for f in dataclasses.fields(SamplingParams)}}
    samp["stop"] = tuple(samp.get("stop", fmt.stop))
    params = SamplingParams(
        **{
            **samp,
            "seed": seed,
            **({"temperature": temperature} if temperature is not None else {}),
            **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}),
        }
    )
    g = get_grader(grader or led.meta.get("grader") or "auto")
    examples = load_examples(data_source)
    premem = final_premem(led, p)
    loaded = _load_trained(model_spec, base_spec)
    sampler = make_sampler("hf", loaded, batch_size=batch_size)
    report = robustness_fn(
        sampler,
        examples,
        fmt,
        g,
        premem,
        prefixes=prefixes or DEFAULT_PREFIXES,
        k=k,
        params=params,
        tokenizer=loaded.tokenizer,
    )
    paths = report.write(out_dir)
    click.echo(report.to_markdown())
    click.echo(f"report: {paths['report']}")


def _load_trained(model_spec: str, base_spec: str | None):
    """A model to probe: a full model spec, or a base model plus a LoRA adapter directory."""

    if base_spec is None:
        return load_model(model_spec)
    base = load_model(base_spec)
    try:
        from peft import PeftModel
    except ImportError as e:
        raise CuratorError("--base with a LoRA adapter needs the 'peft' package") from e
    if not (Path(model_spec) / "adapter_config.json").exists():
        raise CuratorError(
            f"--model {model_spec}: no adapter_config.json; with --base, --model must be a "
            "LoRA adapter directory (e.g. a saved checkpoint-STEP)"
        )
    base.model = PeftModel.from_pretrained(base.model, model_spec).eval()
    return base


@click.command()
@click.argument("recipe", required=False)
@click.option("--set", "overrides", multiple=True, help="Override a recipe key: --set sweep.epochs=[1,2].")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def sweep(recipe, overrides, no_progress):
    """Train a learning-rate x epochs grid (the recipe's `sweep` section), then run predict on it."""
    from curator.analysis.sweep import sweep_from_recipe  # lazy: pulls in numpy, pandas
    from curator.recipes import load_recipe  # lazy: pulls in numpy, yaml

    rec = load_recipe(recipe or "sweep-cpu", overrides)
    result = sweep_from_recipe(rec, progress=not no_progress, echo=click.echo)
    if not is_main_process():  # under `accelerate launch` every rank ran the sweep; one reports
        return
    click.echo(result.report.to_markdown())
    click.echo(f"report: {result.report_paths['report']}")
