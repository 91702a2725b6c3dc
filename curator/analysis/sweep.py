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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.errors import ConfigError, CuratorError
from curator.evaluation import grade_completions
from curator.io import atomic_write_text


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
    from curator.dynamics.tracker import check_references

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
    from curator.analysis.predict import agreement_confidence

    return agreement_confidence([grader.extract(c) for c in completions])


@dataclass
class SweepResult:
    out_dir: Path
    run_dirs: list[Path]
    report: Any  # PredictionReport
    report_paths: dict[str, Path]
    seconds: dict[str, float]


def run_sweep(
    base: Any,
    train: Sequence[Any],
    test: Sequence[Any],
    *,
    fmt: Any,
    grader: Any,
    train_settings: Any,
    learning_rates: Sequence[float],
    epochs: Sequence[int],
    out_dir: str | Path,
    lora: Any = None,
    k: int = 4,
    params: Any = None,
    p: float = 1.105,
    eval_samples: int = 1,
    eval_temperature: float = 0.0,
    eval_max_new_tokens: int | None = None,
    backend: str = "hf",
    sample_batch_size: int = 32,
    lazy: bool = False,
    seed: int = 0,
    p_grid: Sequence[float] | None = None,
    progress: bool = True,
    sampler_factory: Callable[[Any, Any], Any] | None = None,
    vllm: Any = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Train every (learning rate, epochs) configuration, measure, write run dirs, then predict.

    Args:
        base: a `LoadedModel` (model + tokenizer); each configuration trains a deep copy of it.
        train / test: training examples and held-out test examples.
        fmt, grader: the `PromptFormat` and `Grader`.
        train_settings: `TrainSettings`; learning_rate and epochs are replaced per configuration.
        lora: `LoraSettings` or None for full finetuning.
        k, params, p: dynamics samples per example, `SamplingParams`, memorization threshold.
        eval_samples, eval_temperature: test accuracy = mean fraction correct over eval_samples
            completions per test question (1 and 0.0: greedy accuracy). With eval_samples > 1 and
            a temperature > 0 the same samples give the test-side ATC confidences; otherwise an
            extra k-sample pass at the dynamics sampling parameters does.
        lazy: lazy tracking (PreMemAcc determined at every checkpoint, train accuracy of skipped
            cells undetermined); the default full tracking gives every comparison metric.
        sampler_factory: ``(model, tokenizer) -> Sampler``; default: the ``backend``'s provider
            (`make_provider`; with vLLM one engine for the whole sweep, set up by ``vllm``).
    """
    from curator import distributed
    from curator.analysis.predict import load_run, predict, write_report
    from curator.engine import eval_sampling, train_and_track
    from curator.sampling.base import SamplingParams
    from curator.sampling.providers import FactoryProvider, make_provider

    validate_sweep(
        train, test, fmt=fmt, grader=grader, train_settings=train_settings, learning_rates=learning_rates, epochs=epochs
    )
    out = Path(out_dir)
    main = distributed.is_main_process()
    if not main:  # every rank of a launch runs the sweep; one speaks

        def echo(*a, **k):
            return None

    if main:
        out.mkdir(parents=True, exist_ok=True)
    tok = base.tokenizer
    params = params or SamplingParams(stop=fmt.stop, seed=seed)
    eparams = eval_sampling(
        eval_temperature, eval_max_new_tokens or params.max_new_tokens, fmt.stop, seed, top_p=params.top_p
    )
    reuse_eval = eval_samples > 1 and eval_temperature > 0
    # one provider for the whole sweep: with vLLM, one engine that follows every configuration
    provider = (
        FactoryProvider(sampler_factory, tok)
        if sampler_factory is not None
        else make_provider(backend, base, batch_size=sample_batch_size, vllm=vllm, lora=lora is not None)
    )

    train_prompts, _ = fmt.pairs(list(train), tok)  # the tracker's prompts, to find its completions
    test_prompts = [fmt.prompt_text(e, tok) for e in test]
    grid = [(float(lr), int(e)) for e in epochs for lr in learning_rates]
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
            settings = dataclasses.replace(train_settings, learning_rate=lr, epochs=n_ep, seed=seed)
            conf_rows: list[dict] = []

            def after_checkpoint(sampler, info, cells, name=name, conf_rows=conf_rows):
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
                outs = sampler.inner.generate(test_prompts, eval_samples, eparams)
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

            echo(f"[{i}/{len(grid)}] {name}: training {len(train)} examples for {n_ep} epoch(s)")
            res = train_and_track(
                base,
                list(train),
                fmt=fmt,
                grader=grader,
                training=settings,
                provider=provider,
                k=k,
                params=params,
                p=p,
                lazy=lazy,
                exact_every_checkpoint=lazy,
                lora=lora,
                seed=seed,
                after_checkpoint=after_checkpoint,
                record_completions=True,
                ledger_meta={"sweep_config": name},
                progress=progress,
            )
            seconds[name] = res.train_seconds
            rows = [
                {key: r[key] for key in ("checkpoint", "step", "epoch", "test_accuracy")}
                | {key: v for key, v in r.items() if key not in ("checkpoint", "step", "epoch", "test_accuracy")}
                for r in res.checkpoints
            ]
            if main:
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
                    "k": k,
                    "p": p,
                    "lazy": lazy,
                    "eval_samples": eval_samples,
                    "eval_temperature": eval_temperature,
                    "train": dataclasses.asdict(settings),
                    "seconds": seconds[name],
                    "samples_drawn": res.samples_drawn,
                    "complete": True,
                }
                # written last: its presence marks the configuration done
                atomic_write_text(meta_path, json.dumps(meta, indent=2, default=str))
            distributed.barrier("waiting for the main process to write the sweep's files")
            echo(f"[{i}/{len(grid)}] {name}: done in {seconds[name]:.0f}s")
            del res
    finally:
        provider.close()

    runs = [load_run(d) for d in run_dirs]
    report = predict(runs, p=p, p_grid=p_grid)
    paths = write_report(report, out / "predict") if main else {}
    return SweepResult(out_dir=out, run_dirs=run_dirs, report=report, report_paths=paths, seconds=seconds)


def sweep_from_recipe(recipe: Any, progress: bool = True, echo: Callable[[str], None] = print) -> SweepResult:
    """`run_sweep` with everything taken from a recipe (`recipes/sweep-cpu.yaml`).

    The training set is ``data.pool`` (limited by ``data.pool_size``), the test set ``data.test``;
    the grid is ``sweep.learning_rates`` x ``sweep.epochs``; the run directory is the recipe's.
    """
    from curator.data.grading import get_grader
    from curator.data.loaders import load_examples
    from curator.models import load_model
    from curator.sampling.base import SamplingParams

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
    from curator.rounds import RESOLVED_RECIPE
    from curator.run import check_launch

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
    dyn, ev, m = recipe.dynamics, recipe.evaluation, recipe.model
    params = SamplingParams(
        temperature=dyn.temperature,
        top_p=dyn.top_p,
        max_new_tokens=dyn.max_new_tokens,
        stop=recipe.format.stop,
        seed=recipe.seed,
    )
    base = load_model(m.name, dtype=m.dtype, device=m.device, trust_remote_code=m.trust_remote_code)
    out = recipe.run_dir
    from curator import distributed

    if distributed.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        # curator's own name, as `curate run` uses: output_dir may be the folder of the user's recipe.yaml
        atomic_write_text(out / RESOLVED_RECIPE, recipe.to_yaml())
    return run_sweep(
        base,
        train,
        test,
        fmt=recipe.format,
        grader=grader,
        train_settings=recipe.training,
        learning_rates=sw.learning_rates,
        epochs=sw.epochs,
        out_dir=out,
        lora=m.lora,
        k=dyn.samples,
        params=params,
        p=dyn.p,
        eval_samples=ev.samples,
        eval_temperature=ev.temperature,
        eval_max_new_tokens=ev.max_new_tokens,
        backend=dyn.backend,
        vllm=dyn.vllm,
        sample_batch_size=dyn.batch_size,
        lazy=dyn.lazy,
        seed=recipe.seed,
        progress=progress,
        echo=echo,
    )
