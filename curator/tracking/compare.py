"""Data-efficiency curves and the ratio table, read back from MLflow or from a run directory.

Data efficiency of a strategy at one of its points (n examples, accuracy a) is
``examples_iid(a) / n``, where ``examples_iid(a)`` is where the i.i.d. baseline's curve (mean
over seeds, linear between measured points) first reaches accuracy a. When the baseline never
reaches a, only a lower bound is known (reported as ``>x``); when its first point already does,
only an upper bound (``<=x``).

With several seeds (``curate run`` of a recipe with ``seeds:``, one sub-directory per seed) the
curves carry 95% bands (t interval of the mean over seeds), and each strategy's efficiency comes
with a paired bootstrap interval over seeds (seeds resampled with replacement, the same seeds for
the strategy and the baseline, since a seed fixes the seed set and the pool they share), next to
the paired difference in test accuracy at the strategy's last budget with its own bootstrap
interval. A difference is called beyond noise when that accuracy interval excludes 0: the ratio
alone cannot decide, because it is only a bound whenever the baseline's curve is flat or never
reaches the strategy's accuracy. One seed is a smoke test, and the table says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curator import readback
from curator.errors import CuratorError
from curator.io import atomic_write_text
from curator.rounds import COMPARE_TABLE, CURVES, RoundStore, resolved_recipe_file, seed_dirs, strategy_dirs
from curator.tracking import mlflow_store

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
    intervals: dict[str, Efficiency] = field(default_factory=dict)  # label -> over seeds


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
    """Mean over seeds and its 95% t interval, on the union of their budgets (each seed
    interpolated; one seed: the interval is the mean itself)."""
    grid = np.unique(np.concatenate([c.n for c in curves]))
    # only where every seed has data: no extrapolation
    lo = max(c.n.min() for c in curves)
    hi = min(c.n.max() for c in curves)
    grid = grid[(grid >= lo) & (grid <= hi)]
    stack = np.stack([np.interp(grid, c.n, c.acc) for c in curves])
    lo, hi = t_interval(stack)
    return grid, stack.mean(0), lo, hi


def t_interval(stack: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of the mean over axis 0 (rows = seeds)."""
    mean = stack.mean(0)
    n = stack.shape[0]
    if n < 2:
        return mean.copy(), mean.copy()
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, n - 1) * stack.std(0, ddof=1) / np.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Efficiency:
    """A strategy's data efficiency vs the baseline at its last budget, over seeds.

    ``value`` is the ratio from the mean curves; ``lo``/``hi`` the paired bootstrap 95% interval;
    ``censored`` the share of bootstrap draws where the baseline never (``>``) or already (``<=``)
    reached the strategy's accuracy, so the ratio is only a bound; ``acc_diff`` and its interval
    are the mean paired difference in test accuracy at that budget.
    """

    value: float
    bound: str
    lo: float
    hi: float
    censored: float
    acc_diff: float
    diff_lo: float
    diff_hi: float
    seeds: int

    @property
    def verdict(self) -> str:
        """Beyond noise = the paired difference in test accuracy at the strategy's last budget has
        a 95% interval that excludes 0. (The efficiency ratio is censored whenever the baseline
        curve is flat or never reaches the strategy's accuracy, so it cannot decide alone.)"""
        if self.seeds < 2:
            return "one seed: no interval"
        if self.diff_lo > 0:
            return "yes: better"
        if self.diff_hi < 0:
            return "yes: worse"
        return "no"


def efficiency_interval(strategy: list[Curve], baseline: list[Curve], n_boot: int = 2000, seed: int = 0) -> Efficiency:
    """Efficiency of ``strategy`` vs ``baseline`` at the strategy's last common budget, with a
    paired bootstrap over the seeds both have (see the module docstring)."""
    by_seed_s = {c.seed: c for c in strategy}
    by_seed_b = {c.seed: c for c in baseline}
    seeds = sorted(set(by_seed_s) & set(by_seed_b))
    if not seeds:
        raise CuratorError("the strategy and the baseline share no seed; run them with the same seeds")
    S = [by_seed_s[s] for s in seeds]
    B = [by_seed_b[s] for s in seeds]

    def ratio(idx) -> tuple[float, str, float]:
        grid, mean, _, _ = mean_curve([S[i] for i in idx])
        bn, bacc, _, _ = mean_curve([B[i] for i in idx])
        reach = examples_to_reach(bn, bacc, float(mean[-1]))
        base_at = float(np.mean([np.interp(grid[-1], B[i].n, B[i].acc) for i in idx]))
        return reach.examples / grid[-1], reach.bound, mean[-1] - base_at

    value, bound, diff = ratio(list(range(len(seeds))))
    if len(seeds) < 2:
        return Efficiency(value, bound, value, value, float(bound != ""), diff, diff, diff, len(seeds))
    rng = np.random.default_rng(seed)
    draws = [ratio(rng.integers(len(seeds), size=len(seeds))) for _ in range(n_boot)]
    r = np.array([d[0] for d in draws])
    dd = np.array([d[2] for d in draws])
    censored = float(np.mean([d[1] != "" for d in draws]))
    return Efficiency(
        value,
        bound,
        float(np.percentile(r, 2.5)),
        float(np.percentile(r, 97.5)),
        censored,
        diff,
        float(np.percentile(dd, 2.5)),
        float(np.percentile(dd, 97.5)),
        len(seeds),
    )


def curves_from_run_dir(run_dir: str | Path) -> list[Curve]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CuratorError(f"run directory {run_dir} does not exist; pass the output_dir of a `curate run`")
    seed = 0
    recipe_file = resolved_recipe_file(run_dir)
    if recipe_file is not None:
        raw = readback.read_recipe_mapping(recipe_file)
        seed = int(readback.number(raw.get("seed", 0), f"{recipe_file}: seed", lo=0, integer=True))
    curves = []
    for sdir in strategy_dirs(run_dir):
        store = RoundStore(sdir)
        pts = []
        for r in store.finished():
            m = store.metrics(r)
            pts.append((m["n_train"], m.get(METRIC, float("nan"))))
        pts = [(n, a) for n, a in pts if not (a is None or (isinstance(a, float) and math.isnan(a)))]
        if pts:
            n, a = zip(*pts)
            curves.append(Curve(sdir.name, seed, np.array(n, float), np.array(a, float)))
    if not curves:
        raise CuratorError(
            f"no finished rounds with {METRIC} under {run_dir}; run `curate run` first "
            "(and give the recipe a data.test set)"
        )
    return curves


def curves_from_mlflow(uri: str, experiment: str) -> list[Curve]:
    client = mlflow_store._client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise CuratorError(
            f"MLflow experiment {experiment!r} not found at {uri}; available: {', '.join(names) or '(none)'}"
        )
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
        curves.append(
            Curve(
                label,
                _seed_tag(run),
                np.array(steps, float),
                np.array([by_step[s] for s in steps], float),
            )
        )
    if not curves:
        raise CuratorError(f"no runs with metric {METRIC!r} in MLflow experiment {experiment!r}")
    return curves


def _seed_tag(run) -> int:
    """A run's ``seed`` tag (a tag is text anyone can edit in the UI): a whole number, else an error."""
    raw = run.data.tags.get("seed", "0")
    try:
        return int(raw)
    except ValueError:
        raise CuratorError(
            f"MLflow run {run.info.run_id} ({run.info.run_name}): tag seed={raw!r} is not a whole number; "
            "fix the tag in the MLflow UI or delete the run"
        ) from None


def _fmt_reach(r: Reach | None, n: float) -> str:
    if r is None:
        return "—"
    ratio = r.examples / n
    return f"{r.bound}{ratio:.2f}×"


def compare_curves(
    curves: Iterable[Curve], baseline: str = "iid", out_dir: str | Path | None = None, title: str = "data efficiency"
) -> CompareResult:
    curves = list(curves)
    labels = sorted({c.label for c in curves}, key=lambda s: (s != baseline, s))
    grouped = {lab: [c for c in curves if c.label == lab] for lab in labels}
    means = {lab: mean_curve(cs) for lab, cs in grouped.items()}
    budgets = np.unique(np.concatenate([m[0] for m in means.values()]))

    n_seeds = max(len({c.seed for c in cs}) for cs in grouped.values())
    band_note = (
        f"mean over {n_seeds} seeds [95% interval of the mean]"
        if n_seeds > 1
        else "one seed: a smoke test, not evidence (run several seeds for intervals)"
    )
    lines = [
        "### Test accuracy by number of training examples",
        "",
        band_note,
        "",
        "| examples | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
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
    intervals: dict[str, Efficiency] = {}
    if baseline in means:
        bn, bacc = means[baseline][0], means[baseline][1]
        lines += [
            "",
            f"### Data efficiency vs `{baseline}`",
            "",
            f"examples `{baseline}` needs to reach the strategy's accuracy ÷ examples the strategy "
            "used (`>`: the baseline never got there, a lower bound; `<=`: an upper bound)",
            "",
            "| strategy | examples | accuracy | " + f"{baseline} examples for that accuracy | efficiency |",
            "|---|---|---|---|---|",
        ]
        for lab in labels:
            grid, mean, _, _ = means[lab]
            n_last, a_last = float(grid[-1]), float(mean[-1])
            reach = examples_to_reach(bn, bacc, a_last)
            efficiency[lab] = reach
            lines.append(
                f"| {lab} | {int(n_last)} | {a_last:.3f} | {reach.bound}{reach.examples:.1f} | "
                f"{_fmt_reach(reach, n_last)} |"
            )
        lines += _interval_section(grouped, baseline, labels, intervals)
        lines += [
            "",
            "Per budget:",
            "",
            "| examples | " + " | ".join(name for name in labels if name != baseline) + " |",
            "|---" * len(labels) + "|",
        ]
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

        table_path = out / COMPARE_TABLE
        atomic_write_text(table_path, table)
        png = out / CURVES
        _plot(means, grouped, png, title)
    return CompareResult(table=table, table_path=table_path, png=png, efficiency=efficiency, intervals=intervals)


def _interval_section(
    grouped: dict[str, list[Curve]], baseline: str, labels: list[str], intervals: dict[str, Efficiency]
) -> list[str]:
    """The efficiency table with paired bootstrap intervals over seeds and the noise verdict."""
    lines = [
        "",
        f"### Beyond noise? Efficiency vs `{baseline}` over seeds",
        "",
        "at each strategy's last budget; intervals: paired bootstrap over seeds (95%), 2000 draws. "
        "`censored`: share of draws where the baseline never reached the strategy's accuracy "
        "(the ratio there is a lower bound) or had already reached it at its first budget (an "
        "upper bound). Δ test acc: strategy minus baseline at that budget, paired by seed. "
        "Beyond noise = the Δ interval excludes 0 (no correction for comparing several "
        "strategies).",
        "",
        "| strategy | seeds | efficiency | 95% interval | censored | Δ test acc | Δ 95% interval | beyond noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lab in labels:
        if lab == baseline:
            continue
        e = efficiency_interval(grouped[lab], grouped[baseline])
        intervals[lab] = e
        lines.append(
            f"| {lab} | {e.seeds} | {e.bound}{e.value:.2f}× | [{e.lo:.2f}, {e.hi:.2f}] | "
            f"{e.censored:.0%} | {e.acc_diff:+.3f} | [{e.diff_lo:+.3f}, {e.diff_hi:+.3f}] | "
            f"{e.verdict} |"
        )
    return lines


def _plot(means, grouped, path: Path, title: str) -> None:
    # a Figure object, not pyplot: never switches the backend of a notebook that calls us
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.6), dpi=120)
    ax = fig.add_subplot()
    for lab, (grid, mean, lo, hi) in means.items():
        n_seeds = len(grouped[lab])
        (line,) = ax.plot(grid, mean, marker="o", label=lab if n_seeds < 2 else f"{lab} ({n_seeds} seeds)")
        if n_seeds > 1:  # the 95% interval of the mean over seeds
            ax.fill_between(grid, lo, hi, alpha=0.15, color=line.get_color())
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)


def curves_from_any_run_dir(run_dir: str | Path) -> list[Curve]:
    """Curves of one run directory, or of every seed of a multi-seed one."""
    subs = [d for d in seed_dirs(run_dir) if resolved_recipe_file(d) is not None]
    if not subs:
        return curves_from_run_dir(run_dir)
    curves = []
    for d in subs:
        try:
            curves.extend(curves_from_run_dir(d))
        except CuratorError:
            continue  # a seed with no finished round yet
    if not curves:
        raise CuratorError(f"no finished rounds with {METRIC} under {run_dir}/seed-*; run `curate run` first")
    return curves


def compare_run_dir(run_dir: str | Path, baseline: str = "iid", out_dir: str | Path | None = None) -> CompareResult:
    return compare_curves(
        curves_from_any_run_dir(run_dir),
        baseline=baseline,
        out_dir=out_dir or run_dir,
        title=f"{Path(run_dir).resolve().name}: data efficiency",
    )


def compare_mlflow(
    uri: str, experiment: str, baseline: str = "iid", out_dir: str | Path | None = None
) -> CompareResult:
    return compare_curves(
        curves_from_mlflow(uri, experiment), baseline=baseline, out_dir=out_dir, title=f"{experiment}: data efficiency"
    )
