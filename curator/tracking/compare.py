"""Data-efficiency curves and the ratio table, read back from MLflow or from a run directory.

Data efficiency of a strategy at one of its points (n examples, accuracy a) is
``examples_iid(a) / n``, where ``examples_iid(a)`` is where the i.i.d. baseline's curve (mean
over seeds, linear between measured points) first reaches accuracy a. When the baseline never
reaches a, only a lower bound is known (reported as ``>x``); when its first point already does,
only an upper bound (``<=x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from curator.errors import CuratorError
from curator.io import read_json

METRIC = "test_accuracy"


@dataclass(frozen=True)
class Curve:
    label: str  # the strategy's run name
    seed: int
    n: np.ndarray  # examples trained on, increasing
    acc: np.ndarray


@dataclass(frozen=True)
class Reach:
    """Examples a curve needs to reach an accuracy; `bound` is '', '>' or '<='."""

    examples: float
    bound: str = ""


@dataclass
class CompareResult:
    table: str
    table_path: Path | None
    png: Path | None
    efficiency: dict[str, Reach | None]  # label -> efficiency at the strategy's last point


def examples_to_reach(n: np.ndarray, acc: np.ndarray, target: float) -> Reach:
    """First point where the piecewise-linear curve (n, acc) reaches `target`."""
    order = np.argsort(n)
    n, acc = np.asarray(n, float)[order], np.asarray(acc, float)[order]
    if len(n) == 0:
        raise CuratorError("cannot interpolate an empty curve")
    if acc[0] >= target:
        return Reach(float(n[0]), "<=" if len(n) > 1 or acc[0] > target else "")
    for i in range(1, len(n)):
        if acc[i] >= target:
            a0, a1 = acc[i - 1], acc[i]
            frac = (target - a0) / (a1 - a0)
            return Reach(float(n[i - 1] + frac * (n[i] - n[i - 1])))
    return Reach(float(n[-1]), ">")


def mean_curve(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over seeds on the union of their budgets (each seed interpolated)."""
    grid = np.unique(np.concatenate([c.n for c in curves]))
    # only where every seed has data: no extrapolation
    lo = max(c.n.min() for c in curves)
    hi = min(c.n.max() for c in curves)
    grid = grid[(grid >= lo) & (grid <= hi)]
    stack = np.stack([np.interp(grid, c.n, c.acc) for c in curves])
    return grid, stack.mean(0), stack.min(0), stack.max(0)


def curves_from_run_dir(run_dir: str | Path) -> list[Curve]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CuratorError(f"run directory {run_dir} does not exist; pass the output_dir of a `curate run`")
    seed = 0
    recipe_file = run_dir / "curator-run.yaml"  # the resolved recipe (recipe.yaml in older runs)
    if not recipe_file.exists():
        recipe_file = run_dir / "recipe.yaml"
    if recipe_file.exists():
        import yaml

        seed = int((yaml.safe_load(recipe_file.read_text()) or {}).get("seed", 0))
    curves = []
    for sdir in sorted(p for p in run_dir.iterdir() if (p / "run.json").exists()):
        pts = []
        for rd in sorted(sdir.glob("round-*")):
            if (rd / "DONE").exists():
                m = read_json(rd / "metrics.json")
                pts.append((m["n_train"], m.get(METRIC, float("nan"))))
        pts = [(n, a) for n, a in pts if not (a is None or (isinstance(a, float) and math.isnan(a)))]
        if pts:
            n, a = zip(*pts)
            curves.append(Curve(sdir.name, seed, np.array(n, float), np.array(a, float)))
    if not curves:
        raise CuratorError(f"no finished rounds with {METRIC} under {run_dir}; run `curate run` first "
                           "(and give the recipe a data.test set)")
    return curves


def curves_from_mlflow(uri: str, experiment: str) -> list[Curve]:
    from curator.tracking.mlflow_store import _client

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise CuratorError(f"MLflow experiment {experiment!r} not found at {uri}; "
                           f"available: {', '.join(names) or '(none)'}")
    curves = []
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        hist = client.get_metric_history(run.info.run_id, METRIC)
        if not hist:
            continue
        by_step = {}
        for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
            by_step[m.step] = m.value
        steps = sorted(by_step)
        label = run.data.tags.get("strategy_label") or run.info.run_name
        curves.append(Curve(label, int(run.data.tags.get("seed", 0)), np.array(steps, float),
                            np.array([by_step[s] for s in steps], float)))
    if not curves:
        raise CuratorError(f"no runs with metric {METRIC!r} in MLflow experiment {experiment!r}")
    return curves


def _fmt_reach(r: Reach | None, n: float) -> str:
    if r is None:
        return "—"
    ratio = r.examples / n
    return f"{r.bound}{ratio:.2f}×"


def compare_curves(curves: Iterable[Curve], baseline: str = "iid", out_dir: str | Path | None = None,
                   title: str = "data efficiency") -> CompareResult:
    curves = list(curves)
    labels = sorted({c.label for c in curves}, key=lambda s: (s != baseline, s))
    grouped = {lab: [c for c in curves if c.label == lab] for lab in labels}
    means = {lab: mean_curve(cs) for lab, cs in grouped.items()}
    budgets = np.unique(np.concatenate([m[0] for m in means.values()]))

    lines = ["### Test accuracy by number of training examples", "",
             "| examples | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for b in budgets:
        cells = []
        for lab in labels:
            grid, mean, lo, hi = means[lab]
            hit = np.where(grid == b)[0]
            if len(hit):
                i = hit[0]
                band = f" [{lo[i]:.3f}, {hi[i]:.3f}]" if len(grouped[lab]) > 1 else ""
                cells.append(f"{mean[i]:.3f}{band}")
            else:
                cells.append("")
        lines.append(f"| {int(b)} | " + " | ".join(cells) + " |")

    efficiency: dict[str, Reach | None] = {}
    if baseline in means:
        bn, bacc = means[baseline][0], means[baseline][1]
        lines += ["", f"### Data efficiency vs `{baseline}`", "",
                  f"examples `{baseline}` needs to reach the strategy's accuracy ÷ examples the strategy "
                  "used (`>`: the baseline never got there, a lower bound; `<=`: an upper bound)", "",
                  "| strategy | examples | accuracy | " + f"{baseline} examples for that accuracy | efficiency |",
                  "|---|---|---|---|---|"]
        for lab in labels:
            grid, mean, _, _ = means[lab]
            n_last, a_last = grid[-1], mean[-1]
            reach = examples_to_reach(bn, bacc, a_last)
            efficiency[lab] = reach
            lines.append(f"| {lab} | {int(n_last)} | {a_last:.3f} | {reach.bound}{reach.examples:.1f} | "
                         f"{_fmt_reach(reach, n_last)} |")
        lines += ["", "Per budget:", "", "| examples | " + " | ".join(l for l in labels if l != baseline) + " |",
                  "|---" * len(labels) + "|"]
        for b in budgets:
            cells = []
            for lab in labels:
                if lab == baseline:
                    continue
                grid, mean, _, _ = means[lab]
                hit = np.where(grid == b)[0]
                cells.append(_fmt_reach(examples_to_reach(bn, bacc, mean[hit[0]]), b) if len(hit) else "")
            lines.append(f"| {int(b)} | " + " | ".join(cells) + " |")
    else:
        lines += ["", f"(no `{baseline}` run: data efficiency needs it as the baseline)"]
    table = "\n".join(lines) + "\n"

    table_path = png = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from curator.io import atomic_write_text

        table_path = out / "compare.md"
        atomic_write_text(table_path, table)
        png = out / "curves.png"
        _plot(means, grouped, png, title)
    return CompareResult(table=table, table_path=table_path, png=png, efficiency=efficiency)


def _plot(means, grouped, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for lab, (grid, mean, lo, hi) in means.items():
        line, = ax.plot(grid, mean, marker="o", label=lab)
        if len(grouped[lab]) > 1:
            ax.fill_between(grid, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def compare_run_dir(run_dir: str | Path, baseline: str = "iid", out_dir: str | Path | None = None) -> CompareResult:
    return compare_curves(curves_from_run_dir(run_dir), baseline=baseline, out_dir=out_dir or run_dir,
                          title=f"{Path(run_dir).resolve().name}: data efficiency")


def compare_mlflow(uri: str, experiment: str, baseline: str = "iid", out_dir: str | Path | None = None) -> CompareResult:
    return compare_curves(curves_from_mlflow(uri, experiment), baseline=baseline, out_dir=out_dir,
                          title=f"{experiment}: data efficiency")
