"""A probe study: train through stages (SFT, extended SFT, DPO) and log the probe families.

A probe recipe is its own small YAML format (docs/PROBES.md), validated into the frozen
dataclasses below before any model loads. One recipe = one training recipe (one line per panel
of the figure); `curate probes A.yaml B.yaml` runs several on the same probes and draws them
together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from curator.config import from_dict, to_dict
from curator.data.format import PromptFormat
from curator.errors import ConfigError
from curator.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from curator.models import load_model
from curator.models.lora import LoraSettings, apply_lora
from curator.probes.families import FAMILIES, UNRELATED, build_probe_set, greedy_responses, load_rephraser
from curator.probes.preferences import load_preferences
from curator.probes.scoring import ProbeLogger, family_curves, write_probe_table
from curator.sampling.hf import HFSampler
from curator.training import finetune
from curator.training.dpo import PreferencePair, dpo_finetune
from curator.training.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeModel:
    name: str = field(
        default="tiny-random",
        metadata={"help": "Model spec: hub id, local dir, .gguf, smollm2-135m-instruct, tiny-random."},
    )
    dtype: str | None = field(default=None, metadata={"help": "float32 (CPU default), bfloat16, float16."})
    lora: LoraSettings | None = field(
        default=None,
        metadata={"help": "LoRA adapter settings; null: full finetuning (every stage trains the same adapter)."},
    )


@dataclass(frozen=True)
class ProbeData:
    preferences: str = field(
        default="synthetic:easy?n=32&seed=0",
        metadata={
            "help": "Training rows: 'synthetic[:preset][?...]' (y+ a correct trace, y- one wrong step) or a "
            ".jsonl/.json/.parquet/.csv file with question, chosen, rejected (+ optional rephrasings)."
        },
    )
    test: str | None = field(
        default="synthetic:easy?n=8&seed=1",
        metadata={"help": "Held-out rows (same columns) for the test_chosen family; null leaves that family out."},
    )


@dataclass(frozen=True)
class ProbeSettings:
    n: int = field(
        default=4,
        metadata={
            "help": "Probe prompts: the first n training rows (more: smoother curves, "
            "slower evaluations; 10 families per probe)."
        },
    )
    eval_every: int = field(
        default=10,
        metadata={
            "help": "Optimizer steps between probe evaluations (every stage; also at the start and each stage's end)."
        },
    )
    rephrase_model: str | None = field(
        default=None,
        metadata={
            "help": "Model that rephrases y+ / y- for rows without rephrase columns; null: such rows' "
            "rephrase families are left out."
        },
    )
    unrelated: tuple[str, ...] = field(
        default=UNRELATED, metadata={"help": "Sentences for the unrelated and unrelated_shuffled families."}
    )
    greedy_max_new_tokens: int = field(
        default=96, metadata={"help": "Longest greedy response (the greedy family, generated once before training)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Rows per scoring forward pass."})

    def __post_init__(self):
        problems = []
        for name in ("n", "eval_every", "greedy_max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"probes.{name} must be an integer >= 1, got {v!r}")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class Stage:
    kind: Literal["sft", "dpo"] = field(metadata={"help": "'sft' (supervised) or 'dpo' (preference)."})
    targets: Literal["chosen", "both"] = field(
        default="chosen", metadata={"help": "SFT targets: 'chosen' (y+ only) or 'both' (y+ and y-: extended SFT)."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO β (higher: stays closer to the reference)."})
    training: TrainSettings = field(
        default_factory=TrainSettings,
        metadata={"help": "Training settings; checkpoint_every is replaced by probes.eval_every."},
    )

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"beta must be > 0, got {self.beta!r}")
        if self.kind == "dpo" and self.targets != "chosen":
            raise ConfigError("targets applies to sft stages only; DPO always trains on (chosen, rejected) pairs")


@dataclass(frozen=True)
class ProbeRecipe:
    name: str = "probes"
    seed: int = field(default=0, metadata={"help": "Seeds the synthetic wrong steps, the family picks and shuffles."})
    output_dir: str = "runs/probes"
    model: ProbeModel = field(default_factory=ProbeModel)
    format: PromptFormat = field(default_factory=PromptFormat)
    data: ProbeData = field(default_factory=ProbeData)
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    stages: tuple[Stage, ...] = field(default=(), metadata={"help": "Training stages, in order."})

    def __post_init__(self):
        if not self.stages:
            raise ConfigError("stages: give at least one stage (e.g. [{kind: sft}, {kind: dpo}])")


def load_probe_recipe(path: str | os.PathLike, overrides: tuple[str, ...] | list[str] = ()) -> ProbeRecipe:
    """Read, override (``key.path=value``) and validate a probe recipe; every problem at once."""
    import yaml

    from curator.recipes import apply_overrides  # lazy: pulls in yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"probe recipe {str(p)!r} does not exist (shipped ones: recipes/probes/*.yaml)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError("a probe recipe must be a YAML mapping", source=str(p))
    return from_dict(ProbeRecipe, apply_overrides(data, list(overrides)), source=str(p))


@dataclass
class ProbeRun:
    """What `run_probes` returns: the probe table, the probe set and per-stage training results."""

    recipe: ProbeRecipe
    table: Any  # DataFrame with PROBE_COLUMNS
    probe_set: Any
    stages: list[dict[str, Any]]
    probe_seconds: float
    train_seconds: float


def run_probes(
    recipe: ProbeRecipe, out_dir: str | os.PathLike | None = None, *, progress: bool = True, loaded: Any = None
) -> ProbeRun:
    """Run every stage of `recipe`, logging the probe families at every evaluation step.

    Writes ``probes.parquet`` (the probe table), ``probe_set.json``, ``summary.json`` and a ``DONE``
    marker to `out_dir` when given. `loaded` reuses an already loaded model (`load_model` result),
    which is trained in place.
    """
    import time

    model, tok, rows, pset = _setup(recipe, loaded)
    logger = ProbeLogger(pset, recipe.format, tok, recipe=recipe.name, batch_size=recipe.probes.batch_size)
    logger.log(model, stage="init", stage_index=0, step=0, stage_step=0, epoch=0.0)
    offset, summaries, train_seconds = 0, [], 0.0
    for k, stage in enumerate(recipe.stages, start=1):
        logged: set[int] = set()

        def log_at(m, step, epoch, stage=stage, k=k, offset=offset, logged=logged):
            logger.log(m, stage=stage.kind, stage_index=k, step=offset + step, stage_step=step, epoch=epoch)
            logged.add(step)

        t0, p0 = time.perf_counter(), logger.seconds
        res, n_rows = _train_stage(
            model, tok, recipe, stage, rows, lambda m, info, f=log_at: f(m, info.step, info.epoch), progress
        )
        if res.steps not in logged:  # the stage's end is always an evaluation
            log_at(model, res.steps, float(stage.training.epochs))
        train_seconds += time.perf_counter() - t0 - (logger.seconds - p0)
        summaries.append(
            {
                "stage": k,
                "kind": stage.kind,
                "targets": stage.targets if stage.kind == "sft" else None,
                "steps": res.steps,
                "rows": n_rows,
                "final_metrics": res.final_metrics,
                "step_losses": res.step_losses,
            }
        )
        offset += res.steps
    run = ProbeRun(
        recipe=recipe,
        table=logger.table(),
        probe_set=pset,
        stages=summaries,
        probe_seconds=logger.seconds,
        train_seconds=train_seconds,
    )
    if out_dir is not None:
        _write_run(run, Path(out_dir))
    return run


def _setup(recipe: ProbeRecipe, loaded: Any) -> tuple[Any, Any, list, Any]:
    """Rows, the rephrasing model, the model (LoRA applied), its greedy responses and the probe set.

    Data and the rephrasing model are checked before the main model loads.
    """

    rows = load_preferences(recipe.data.preferences, seed=recipe.seed)
    test = load_preferences(recipe.data.test, seed=recipe.seed) if recipe.data.test else []
    if recipe.probes.n > len(rows):
        raise ConfigError(f"probes.n={recipe.probes.n} but data.preferences has only {len(rows)} rows")
    rephraser = load_rephraser(recipe.probes.rephrase_model)
    if loaded is None:
        loaded = load_model(recipe.model.name, dtype=recipe.model.dtype)
    model, tok = loaded.model, loaded.tokenizer
    if recipe.model.lora is not None:
        model = apply_lora(model, recipe.model.lora)
    probes = rows[: recipe.probes.n]
    greedy = greedy_responses(HFSampler(model, tok), probes, recipe.format, tok, recipe.probes.greedy_max_new_tokens)
    pset = build_probe_set(
        probes, rows, test, seed=recipe.seed, unrelated=recipe.probes.unrelated, rephraser=rephraser, greedy=greedy
    )
    for note in pset.notes:
        log.warning("%s", note)
    return model, tok, rows, pset


def _train_stage(
    model: Any, tok: Any, recipe: ProbeRecipe, stage: Stage, rows: list, on_checkpoint: Any, progress: bool
) -> tuple[Any, int]:
    """One SFT or DPO stage with a checkpoint every probes.eval_every steps; (TrainResult, rows trained on)."""

    fmt = recipe.format
    n_rows = len(rows) * (2 if stage.kind == "sft" and stage.targets == "both" else 1)
    total = stage.training.total_steps(n_rows, 1)
    # a stage shorter than eval_every still gets an evaluation at its end (see run_probes)
    settings = replace(stage.training, checkpoint_every=min(recipe.probes.eval_every, total), save_checkpoints=False)
    if stage.kind == "sft":
        examples = [r.example("chosen") for r in rows]
        if stage.targets == "both":
            examples += [r.example("rejected") for r in rows]
        return finetune(model, tok, examples, fmt, settings, on_checkpoint=on_checkpoint, progress=progress), n_rows
    pairs = [
        PreferencePair(
            fmt.prompt_text(r.example(), tok),
            fmt.target_text(r.example("chosen")),
            fmt.target_text(r.example("rejected")),
        )
        for r in rows
    ]
    return dpo_finetune(
        model, tok, pairs, settings, beta=stage.beta, on_checkpoint=on_checkpoint, progress=progress
    ), n_rows


def _write_run(run: ProbeRun, out: Path) -> None:
    """The run's files, each written atomically, DONE last (a rerun skips a finished recipe)."""

    write_probe_table(run.table, out / "probes.parquet")
    atomic_write_json(out / "probe_set.json", run.probe_set.to_dict())
    atomic_write_json(
        out / "summary.json",
        {
            "recipe": to_dict(run.recipe),
            "stages": run.stages,
            "probe_seconds": run.probe_seconds,
            "train_seconds": run.train_seconds,
            "notes": run.probe_set.notes,
        },
    )
    atomic_write_text(out / "DONE", "")


# -- the figure -----------------------------------------------------------------------------------

FAMILY_TITLES = {
    "chosen": "y+ (chosen)",
    "rejected": "y- (rejected)",
    "chosen_rephrase": "y+ rephrased",
    "rejected_rephrase": "y- rephrased",
    "other_chosen": "y+ of another train prompt",
    "test_chosen": "y+ of a test prompt",
    "unrelated": "unrelated sentence",
    "chosen_shuffled": "y+ words shuffled",
    "unrelated_shuffled": "unrelated, shuffled",
    "greedy": "greedy response at start",
}
MARKED = "tab:red"  # frame colour of the panels the squeezing effect is read from


def plot_probes(
    table: Any, path: str | os.PathLike | None = None, metric: str = "logprob_sum", title: str | None = None
) -> Any:
    """One panel per family plus the argmax panel, one line per recipe; x = steps since DPO began.

    The y- panel and the argmax panel (teacher-forced argmax-token log-prob along y+) are framed
    in red: DPO should push the first down and, by the squeezing effect, the second up. Returns
    the matplotlib Figure (saved to `path` when given); no global backend is changed.
    """
    from matplotlib.figure import Figure

    curves = family_curves(table, metric)
    argmax_metric = "argmax_" + metric.replace("argmax_", "")
    argmax = family_curves(table[table["family"] == "chosen"], argmax_metric)
    fams = [f for f in FAMILIES if f in set(curves["family"])]
    fams += sorted(set(curves["family"]) - set(fams))
    panels = fams + ["argmax"]
    cols = 4
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows), layout="constrained")
    axes: Any = fig.subplots(rows, cols, squeeze=False).ravel()
    recipes = list(dict.fromkeys(table["recipe"]))
    colors = {r: c for r, c in zip(recipes, ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"] * 4)}
    for ax, fam in zip(axes, panels):
        data = argmax if fam == "argmax" else curves[curves["family"] == fam]
        for recipe in recipes:
            d = data[data["recipe"] == recipe].sort_values("step")
            ax.plot(
                d["since_dpo"],
                d[argmax_metric if fam == "argmax" else metric],
                marker=".",
                ms=3,
                color=colors[recipe],
                label=recipe,
            )
        ax.axvline(0, color="0.6", lw=0.8, ls="--")
        name = "argmax token along y+ (teacher forced)" if fam == "argmax" else FAMILY_TITLES.get(fam, fam)
        ax.set_title(name, fontsize=9, color=MARKED if fam in ("rejected", "argmax") else "black")
        if fam in ("rejected", "argmax"):
            for s in ax.spines.values():
                s.set_color(MARKED)
                s.set_linewidth(1.6)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.supxlabel("optimizer steps since DPO began (dashed line; negative = SFT)", fontsize=9)
    label = {"logprob_sum": "summed log-prob", "logprob_mean": "mean per-token log-prob"}.get(metric, metric)
    fig.supylabel(f"{label}, mean over probes", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
        atomic_write_bytes(path, buf.getvalue())
    return fig


def squeeze_report(table: Any, metric: str = "logprob_sum") -> dict[str, dict[str, dict[str, float]]]:
    """Per recipe and family: the value at the DPO start, at the DPO end, and the change.

    The argmax-token log-prob along y+ appears as the family ``argmax``. This is what docs/PROBES.md
    reads the squeezing effect from.
    """

    curves = family_curves(table, metric)
    argmax_metric = "argmax_" + metric.replace("argmax_", "")
    am = family_curves(table[table["family"] == "chosen"], argmax_metric).rename(columns={argmax_metric: metric})
    am["family"] = "argmax"
    import pandas as pd

    allc = pd.concat([curves, am], ignore_index=True)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (recipe, fam), d in allc.groupby(["recipe", "family"], sort=False):
        d = d.sort_values("step")
        start = d[d["since_dpo"] <= 0]
        after = d[d["since_dpo"] > 0]
        if not len(start) or not len(after):
            continue
        a, b = float(start[metric].iloc[-1]), float(after[metric].iloc[-1])
        out.setdefault(recipe, {})[fam] = {"dpo_start": a, "dpo_end": b, "change": b - a}
    return out
