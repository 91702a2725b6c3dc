"""The paper's prediction design: one base model, one training set, a grid of learning rates x
epochs; every checkpoint of every configuration is one (PreMemAcc, test accuracy) point.

`run_sweep` trains each configuration from the same base model with full dynamics tracking (every
example sampled k times at every checkpoint, so that train accuracy and PreMemAcc are complete),
measures test accuracy at each checkpoint, and writes one run directory per configuration::

    out_dir/lr0.001-ep3/ledger.parquet       the ledger (docs/LEDGER.md)
    out_dir/lr0.001-ep3/checkpoints.csv      checkpoint, step, epoch, test_accuracy, train_loss,
                                             grad_variance, dist_from_init, seconds
    out_dir/lr0.001-ep3/confidences.parquet  per-example agreement confidences for ATC
    out_dir/lr0.001-ep3/run.json             settings, timing; "complete": true when finished
    out_dir/predict/                         `predict` + `write_report` over all of them

A configuration whose run.json says complete is not retrained, so an interrupted sweep resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator import distributed
from curator.analysis.predict import agreement_confidence, load_run, predict, write_report
from curator.data.grading import get_grader
from curator.data.loaders import load_examples
from curator.dynamics.settings import DynamicsSettings, EvalSettings
from curator.dynamics.tracker import check_references
from curator.engine import ModelStart, RoundExtras, eval_sampling, train_and_track
from curator.errors import ConfigError, CuratorError
from curator.evaluation import grade_completions
from curator.io import atomic_write_text
from curator.models import load_model
from curator.rounds import RESOLVED_RECIPE
from curator.sampling.providers import make_provider


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def config_name(learning_rate: float, epochs: int) -> str:
    return f"lr{learning_rate:g}-ep{int(epochs)}"


def check_grid(learning_rates: Sequence[float], epochs: Sequence[int]) -> list[str]:
    problems = []
    if not learning_rates:
        problems.append("sweep.learning_rates is empty; list at least one learning rate")
    if not epochs:
        problems.append("sweep.epochs is empty; list at least one epoch count")
    if any(not lr > 0 for lr in learning_rates):
        problems.append(f"sweep.learning_rates must all be > 0, got {list(learning_rates)}")
    if any(int(e) != e or e < 1 for e in epochs):
        problems.append(f"sweep.epochs must be integers >= 1, got {list(epochs)}")
    if len(set(learning_rates)) != len(learning_rates) or len(set(epochs)) != len(epochs):
        problems.append("sweep.learning_rates and sweep.epochs must not repeat values")
    return problems


def validate_sweep(
    train: Sequence[Any],
    test: Sequence[Any],
    *,
    fmt: Any,
    grader: Any,
    train_settings: Any,
    learning_rates: Sequence[float],
    epochs: Sequence[int],
) -> None:
    """Every check that can fail before a model loads: the grid, each configuration's settings and
    checkpoint schedule, the test set, and that the training references grade as correct."""

    problems = check_grid(learning_rates, epochs)
    if not test:
        problems.append("the sweep needs a held-out test set (data.test) to predict")
    if not problems:
        for lr in learning_rates:
            for n_ep in epochs:
                try:
                    dataclasses.replace(train_settings, learning_rate=float(lr), epochs=int(n_ep)).checkpoint_schedule(
                        len(train)
                    )
                except ConfigError as e:
                    problems.extend(f"{config_name(lr, n_ep)}: {q}" for q in e.problems)
    if problems:
        raise ConfigError(problems)
    check_references(train, grader, fmt)


def _confidence(grader: Any, completions: Sequence[str]) -> float:
    return agreement_confidence([grader.extract(c) for c in completions])


@dataclass
class SweepResult:
    out_dir: Path
    run_dirs: list[Path]
    report: Any  # PredictionReport
    report_paths: dict[str, Path]
    seconds: dict[str, float]


@dataclass(frozen=True)
class SweepConfig:
    """What every configuration of a sweep shares, besides the data and the base model.

    Attributes:
        fmt, grader: the `PromptFormat` and `Grader`.
        training: `TrainSettings`; learning_rate and epochs are replaced per configuration.
        grid: `SweepSettings` (learning_rates x epochs).
        dynamics: the measurement (`DynamicsSettings`); a sweep defaults to full tracking with
            k=4 (every comparison metric complete). With ``lazy`` PreMemAcc is determined at every
            checkpoint and the train accuracy of skipped cells is not.
        evaluation: test accuracy = mean fraction correct over ``samples`` completions per test
            question (1 and temperature 0: greedy accuracy). With samples > 1 and a temperature > 0
            the same samples give the test-side ATC confidences; otherwise an extra k-sample pass
            at the dynamics sampling parameters does. ``max_new_tokens`` None: the dynamics'.
        lora: `LoraSettings` or None for full finetuning.
        seed: seeds training, sampling and LoRA's initialisation.
    """

    fmt: Any
    grader: Any
    training: Any
    grid: Any
    dynamics: DynamicsSettings = field(default_factory=lambda: DynamicsSettings(samples=4, lazy=False))
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    lora: Any = None
    seed: int = 0


def run_sweep(
    base: Any,
    train: Sequence[Any],
    test: Sequence[Any],
    config: SweepConfig,
    *,
    out_dir: str | Path,
    p_grid: Sequence[float] | None = None,
    progress: bool = True,
    sampler_factory: Callable[[Any, Any], Any] | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Train every (learning rate, epochs) configuration, measure, write run dirs, then predict.

    Args:
        base: a `LoadedModel` (model + tokenizer); each configuration trains a deep copy of it.
        train / test: training examples and held-out test examples.
        config: the settings every configuration shares (`SweepConfig`).
        sampler_factory: ``(model, tokenizer) -> Sampler``; default: the ``dynamics.backend``'s
            provider (`make_provider`; with vLLM one engine for the whole sweep).
    """

    c, dyn = config, config.dynamics
    validate_sweep(
        train,
        test,
        fmt=c.fmt,
        grader=c.grader,
        train_settings=c.training,
        learning_rates=c.grid.learning_rates,
        epochs=c.grid.epochs,
    )
    out = Path(out_dir)
    main = distributed.is_main_process()
    if not main:  # every rank of a launch runs the sweep; one speaks

        def echo(*a, **k):
            return None

    if main:
        out.mkdir(parents=True, exist_ok=True)
    # one provider for the whole sweep: with vLLM, one engine that follows every configuration
    provider = make_provider(
        dyn.backend, base, batch_size=dyn.batch_size, vllm=dyn.vllm, lora=c.lora is not None, factory=sampler_factory
    )
    grid = [(float(lr), int(e)) for e in c.grid.epochs for lr in c.grid.learning_rates]
    run_dirs, seconds = [], {}
    try:
        for i, (lr, n_ep) in enumerate(grid, 1):
            name = config_name(lr, n_ep)
            rd = out / name
            run_dirs.append(rd)
            meta_path = rd / "run.json"
            if meta_path.exists() and json.loads(meta_path.read_text()).get("complete"):
                echo(f"[{i}/{len(grid)}] {name}: already done, skipped")
                continue
            echo(f"[{i}/{len(grid)}] {name}: training {len(train)} examples for {n_ep} epoch(s)")
            seconds[name] = _run_config(base, train, test, c, provider, rd, lr, n_ep, progress, echo)
            distributed.barrier("waiting for the main process to write the sweep's files")
            echo(f"[{i}/{len(grid)}] {name}: done in {seconds[name]:.0f}s")
    finally:
        provider.close()

    runs = [load_run(d) for d in run_dirs]
    report = predict(runs, p=dyn.p, p_grid=p_grid)
    paths = write_report(report, out / "predict") if main else {}
    return SweepResult(out_dir=out, run_dirs=run_dirs, report=report, report_paths=paths, seconds=seconds)


def _sampling(c: SweepConfig) -> tuple[Any, Any]:
    """(dynamics sampling parameters, test-time sampling parameters) of a sweep."""

    params = c.dynamics.sampling(c.fmt.stop, c.seed)
    ev = c.evaluation
    return params, eval_sampling(ev.temperature, ev.max_new_tokens, c.fmt.stop, c.seed, top_p=params.top_p)


def _run_config(
    base: Any,
    train: Sequence[Any],
    test: Sequence[Any],
    c: SweepConfig,
    provider: Any,
    rd: Path,
    lr: float,
    n_ep: int,
    progress: bool,
    echo: Callable[[str], None],
) -> float:
    """Train and measure one configuration; the main process writes its run directory."""

    name, dyn, ev = rd.name, c.dynamics, c.evaluation
    settings = dataclasses.replace(c.training, learning_rate=lr, epochs=n_ep, seed=c.seed)
    conf_rows: list[dict] = []
    res = train_and_track(
        base,
        list(train),
        fmt=c.fmt,
        grader=c.grader,
        training=settings,
        provider=provider,
        measure=dyn.measure_settings(c.fmt.stop, c.seed, exact_every_checkpoint=dyn.lazy),
        start=ModelStart(lora=c.lora, seed=c.seed),
        extras=RoundExtras(
            after_checkpoint=_checkpoint_work(base, train, test, c, conf_rows, name, echo),
            record_completions=True,
            ledger_meta={"sweep_config": name},
        ),
        progress=progress,
    )
    rows = [
        {key: r[key] for key in ("checkpoint", "step", "epoch", "test_accuracy")}
        | {key: v for key, v in r.items() if key not in ("checkpoint", "step", "epoch", "test_accuracy")}
        for r in res.checkpoints
    ]
    if distributed.is_main_process():
        rd.mkdir(parents=True, exist_ok=True)
        res.ledger.to_parquet(rd / "ledger.parquet")
        atomic_write_text(rd / "checkpoints.csv", pd.DataFrame(rows).to_csv(index=False))
        _write_parquet(pd.DataFrame(conf_rows), rd / "confidences.parquet")
        meta = {
            "name": name,
            "learning_rate": lr,
            "epochs": n_ep,
            "n_train": len(train),
            "n_test": len(test),
            "k": dyn.samples,
            "p": dyn.p,
            "lazy": dyn.lazy,
            "eval_samples": ev.samples,
            "eval_temperature": ev.temperature,
            "train": dataclasses.asdict(settings),
            "seconds": res.train_seconds,
            "samples_drawn": res.samples_drawn,
            "complete": True,
        }
        # written last: its presence marks the configuration done
        atomic_write_text(rd / "run.json", json.dumps(meta, indent=2, default=str))
    return res.train_seconds


def _checkpoint_work(
    base: Any,
    train: Sequence[Any],
    test: Sequence[Any],
    c: SweepConfig,
    conf_rows: list[dict],
    name: str,
    echo: Callable[[str], None],
) -> Callable[..., dict]:
    """The sweep's per-checkpoint work: test accuracy and the ATC confidences (into ``conf_rows``)."""
    tok, grader, k = base.tokenizer, c.grader, c.dynamics.samples
    params, eparams = _sampling(c)
    reuse_eval = c.evaluation.samples > 1 and c.evaluation.temperature > 0
    train_prompts, _ = c.fmt.pairs(list(train), tok)  # the tracker's prompts, to find its completions
    test_prompts = [c.fmt.prompt_text(e, tok) for e in test]

    def after_checkpoint(sampler, info, cells):
        t_ck = time.time()
        # train side of ATC: each example's agreement confidence and its sampled accuracy
        for ex, prompt, cell in zip(train, train_prompts, cells):
            comps = sampler.completions.get(prompt, [])
            if comps and cell["skip_reason"] is None:
                conf_rows.append(
                    {
                        "checkpoint": int(info.index),
                        "split": "train",
                        "example_id": ex.id,
                        "confidence": _confidence(grader, comps),
                        "accuracy": cell["n_correct"] / cell["n_samples"],
                    }
                )
        outs = sampler.inner.generate(test_prompts, c.evaluation.samples, eparams)
        test_acc = grade_completions(test, outs, grader).accuracy
        if not reuse_eval:
            outs = sampler.inner.generate(test_prompts, k, dataclasses.replace(params, seed=params.seed + 7919))
        for ex, comps in zip(test, outs):
            conf_rows.append(
                {
                    "checkpoint": int(info.index),
                    "split": "test",
                    "example_id": ex.id,
                    "confidence": _confidence(grader, comps),
                    "accuracy": np.nan,
                }
            )
        echo(
            f"  {name} checkpoint {info.index}: test acc {test_acc:.3f}, "
            f"train loss {(info.metrics or {}).get('train_loss', float('nan')):.4f}"
        )
        return {"test_accuracy": float(test_acc), "seconds": time.time() - t_ck}

    return after_checkpoint


def sweep_from_recipe(recipe: Any, progress: bool = True, echo: Callable[[str], None] = print) -> SweepResult:
    """`run_sweep` with everything taken from a recipe (`recipes/sweep-cpu.yaml`).

    The training set is ``data.pool`` (limited by ``data.pool_size``), the test set ``data.test``;
    the grid is ``sweep.learning_rates`` x ``sweep.epochs``; the run directory is the recipe's.
    """

    sw = recipe.sweep
    if sw is None:
        raise ConfigError("the recipe has no 'sweep' section; add sweep: {learning_rates: [...], epochs: [...]}")
    problems = check_grid(sw.learning_rates, sw.epochs)
    d = recipe.data
    if not d.test:
        problems.append("data.test is not set; a sweep predicts test accuracy and needs a test set")
    if recipe.dynamics.defer:
        problems.append(
            "dynamics.defer leaves intermediate checkpoints unsampled, but a sweep needs "
            "PreMemAcc at every checkpoint; set dynamics.defer: false"
        )
    if problems:
        raise ConfigError(problems)
    from curator.run import check_launch  # lazy: pulls in yaml

    check_launch(recipe)
    grader = get_grader(d.grader)
    train = load_examples(d.pool, config=d.pool_config, split=d.pool_split, fields=d.fields or None, limit=d.pool_size)
    test = load_examples(d.test, config=d.test_config, split=d.test_split, fields=d.fields or None, limit=d.test_size)
    if not train:
        raise CuratorError(f"data.pool {d.pool!r} gave no training examples")
    validate_sweep(
        train,
        test,
        fmt=recipe.format,
        grader=grader,
        train_settings=recipe.training,
        learning_rates=sw.learning_rates,
        epochs=sw.epochs,
    )  # before the model loads
    m = recipe.model
    base = load_model(m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
    out = recipe.run_dir

    if distributed.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        # curator's own name, as `curate run` uses: output_dir may be the folder of the user's recipe.yaml
        atomic_write_text(out / RESOLVED_RECIPE, recipe.to_yaml())
    config = SweepConfig(
        fmt=recipe.format,
        grader=grader,
        training=recipe.training,
        grid=sw,
        dynamics=recipe.dynamics,
        evaluation=recipe.evaluation,
        lora=m.lora,
        seed=recipe.seed,
    )
    return run_sweep(base, train, test, config, out_dir=out, progress=progress, echo=echo)
