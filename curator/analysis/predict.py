"""Predict test accuracy from training dynamics across runs (DESIGN §1, claim 1).

A *run* is one training configuration: its ledger (one row per example and checkpoint) plus a
per-checkpoint table with the test accuracy measured at that checkpoint and, optionally, the
comparison signals logged during training (``train_loss``, ``grad_variance``,
``dist_from_init``) and label-free confidences for ATC. Every (run, checkpoint) is one point;
each metric is fitted against test accuracy by least squares and the metrics are ranked by R².

Metrics (all per checkpoint; see docs/ANALYSIS.md for the definitions):

- ``premem``: dataset-level PreMemAcc at threshold p (`curator.dynamics.metrics`).
- ``train_accuracy``: mean fraction of sampled answers that are correct on the training set.
- ``train_loss``, ``grad_variance``, ``dist_from_init``: from the training hooks.
- ``atc``: average-threshold-confidence (Garg et al. 2022), see `atc_predict`.
- ``pathway_distance``, ``pathway_consistency``: MoE routing monitors (Li, Fan & Zhou) from a
  ledger's ``pathway`` / ``pathway_consistency`` columns, at the routing settings recorded in its
  metadata (`curator.dynamics.routing.routing_metrics`; docs/ROUTING.md).

Nothing here silently drops data: points or examples left out are listed in the report's
``exclusions``; anything that would make a fit meaningless raises `CuratorError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator import readback
from curator.dynamics import metrics, routing
from curator.dynamics.ledger import METADATA_KEY, Ledger, read_ledger
from curator.errors import CuratorError, DataError, require
from curator.io import read_json

#: metric column -> human label (the order is the default display order)
METRICS: dict[str, str] = {
    "premem": "PreMemAcc",
    "train_accuracy": "train accuracy",
    "train_loss": "train loss",
    "grad_variance": "gradient variance",
    "dist_from_init": "distance from init",
    "atc": "ATC",
    "pathway_distance": "pathway distance",
    "pathway_consistency": "pathway consistency",
}
#: per-checkpoint columns taken as given from a run's checkpoint table
CHECKPOINT_SIGNALS = ("train_loss", "grad_variance", "dist_from_init")
#: thresholds for the p sweep; PreMemAcc needs p > 1 and tends to train accuracy as p -> 1
DEFAULT_P_GRID = (1.01, 1.02, 1.05, 1.08, 1.105, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0)
CONFIDENCE_COLUMNS = ("checkpoint", "split", "example_id", "confidence")


# ----------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class Fit:
    """Least-squares line y = slope * x + intercept.

    ``r2`` is the coefficient of determination (= Pearson r² for one predictor); the intervals
    are percentile bootstrap intervals over resampled points. ``excluded`` lists the indices of
    input points dropped because x or y was NaN.
    """

    slope: float
    intercept: float
    r2: float
    r: float
    n: int
    slope_ci: tuple[float, float]
    r2_ci: tuple[float, float]
    excluded: tuple[int, ...] = ()

    @property
    def n_excluded(self) -> int:
        return len(self.excluded)

    def predict(self, x: Any) -> np.ndarray:
        return self.slope * np.asarray(x, dtype=float) + self.intercept


def _moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centred sums of squares along the last axis (works for one sample or a bootstrap batch)."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    return (dx * dx).sum(-1), (dx * dy).sum(-1), (dy * dy).sum(-1)


def linear_fit(
    x: Sequence[float], y: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95, what: str = "fit"
) -> Fit:
    """Least-squares fit of y on x, with bootstrap intervals for slope and R².

    Points where x or y is NaN are dropped and listed in ``Fit.excluded``.

    Raises:
        CuratorError: fewer than 3 usable points, lengths differ, x or y constant.
    """
    xa = np.asarray(x, dtype=float).ravel()
    ya = np.asarray(y, dtype=float).ravel()
    if xa.shape != ya.shape:
        raise CuratorError(f"{what}: x has {xa.size} points but y has {ya.size}; pass one y per x")
    bad = ~(np.isfinite(xa) & np.isfinite(ya))
    excluded = tuple(int(i) for i in np.flatnonzero(bad))
    xa, ya = xa[~bad], ya[~bad]
    n = xa.size
    if n < 3:
        dropped = f" ({len(excluded)} dropped as NaN)" if excluded else ""
        raise CuratorError(f"{what}: a linear fit needs at least 3 points, got {n}{dropped}; add runs or checkpoints")
    sxx, sxy, syy = (float(v) for v in _moments(xa, ya))
    # relative tolerance: values that differ only by float noise count as constant
    if sxx <= 1e-24 * max(1.0, float(np.abs(xa).max()) ** 2) * n:
        raise CuratorError(f"{what}: x is constant ({xa[0]:g}) across all {n} points; nothing to fit")
    if syy <= 1e-24 * max(1.0, float(np.abs(ya).max()) ** 2) * n:
        raise CuratorError(f"{what}: y is constant ({ya[0]:g}) across all {n} points; R² is undefined")
    slope = sxy / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    r = sxy / math.sqrt(sxx * syy)
    r2 = r * r

    slope_ci = r2_ci = (float("nan"), float("nan"))
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        bxx, bxy, byy = _moments(xa[idx], ya[idx])
        ok = (bxx > 0) & (byy > 0)  # resamples that repeat one x (or one y) have no line
        if ok.sum() >= max(10, n_boot // 10):
            q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
            bs = bxy[ok] / bxx[ok]
            br2 = bxy[ok] ** 2 / (bxx[ok] * byy[ok])
            slope_ci = tuple(float(v) for v in np.percentile(bs, q))  # type: ignore[assignment]
            r2_ci = tuple(float(v) for v in np.percentile(br2, q))  # type: ignore[assignment]
    return Fit(
        slope=float(slope),
        intercept=intercept,
        r2=float(r2),
        r=float(r),
        n=int(n),
        slope_ci=slope_ci,
        r2_ci=r2_ci,
        excluded=excluded,
    )


# ----------------------------------------------------------------------------- ATC


def atc_threshold(source_conf: Sequence[float], source_acc: float) -> tuple[float, float]:
    """ATC threshold on source (labelled) confidences.

    Garg et al. (2022) pick t so that the fraction of source examples with confidence above t
    equals the source accuracy. Confidences here are discrete (agreement fractions), so an exact
    t rarely exists; ties at t are split: a fraction ``lam`` of the examples *at* t counts as
    above. Returns ``(t, lam)`` with  P(s > t) + lam * P(s == t) = source_acc  on the source set.
    """
    s = np.sort(np.asarray(source_conf, dtype=float))[::-1]
    if s.size == 0:
        raise CuratorError("ATC: no source confidences")
    if not 0.0 <= source_acc <= 1.0:
        raise CuratorError(f"ATC: source accuracy must be in [0, 1], got {source_acc}")
    n = s.size
    # how many examples must count as "above"; rounded so that 0.6 * 5 is 3, not 3.0000000000000004
    target = round(source_acc * n, 9)
    if target <= 0:
        return float(s[0]), 0.0
    if target >= n:
        return float(s[-1]), 1.0
    t = float(s[int(math.ceil(target)) - 1])  # the score of the last example needed
    above = float((s > t).sum())
    at = float((s == t).sum())
    return t, (target - above) / at


def atc_predict(source_conf: Sequence[float], source_acc: float, target_conf: Sequence[float]) -> float:
    """Predicted target accuracy: the (tie-split) fraction of target confidences above t."""
    t, lam = atc_threshold(source_conf, source_acc)
    c = np.asarray(target_conf, dtype=float)
    if c.size == 0:
        raise CuratorError("ATC: no target confidences")
    return float(((c > t).sum() + lam * (c == t).sum()) / c.size)


def agreement_confidence(answers: Sequence[str | None]) -> float:
    """Label-free confidence of one query: the share of its k samples that give the majority answer.

    Samples with no extractable answer never count as agreeing (a query whose samples all fail to
    answer has confidence 0).
    """
    if len(answers) == 0:
        raise CuratorError("agreement_confidence: no samples")
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return (max(counts.values()) if counts else 0) / len(answers)


# ----------------------------------------------------------------------------- runs


def _ledger_df(ledger: Any) -> pd.DataFrame:
    return ledger.df if hasattr(ledger, "df") else ledger


@dataclass
class Run:
    """One training configuration for prediction.

    Attributes:
        name: label used in tables, plots and error messages.
        ledger: a `curator.dynamics.ledger.Ledger` (or its DataFrame).
        checkpoints: one row per checkpoint: ``checkpoint`` (1-based, as in the ledger),
            ``test_accuracy``, optionally ``step``, ``epoch``, ``train_loss``, ``grad_variance``,
            ``dist_from_init``, ``atc`` (a precomputed ATC prediction).
        confidences: optional per-example confidences for ATC: ``checkpoint``, ``split``
            ("train" = labelled source, "test" = target), ``example_id``, ``confidence``, and for
            train rows ``accuracy`` (fraction of samples correct).
        source: where the run came from (a path or MLflow run id), for messages.
    """

    name: str
    ledger: Any
    checkpoints: pd.DataFrame
    confidences: pd.DataFrame | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def df(self) -> pd.DataFrame:
        return _ledger_df(self.ledger)


def make_run(name: str, ledger: Any, test_accuracy: Any, **signals: Any) -> Run:
    """A Run from a ledger and its test accuracies (e.g. for an imported ledger).

    Args:
        test_accuracy: one value per ledger checkpoint in order (a sequence), a mapping
            checkpoint -> accuracy, or a DataFrame with ``checkpoint`` and ``test_accuracy``.
        signals: optional per-checkpoint sequences aligned like ``test_accuracy`` (``train_loss``,
            ``grad_variance``, ``dist_from_init``, ``atc``).
    """
    if isinstance(test_accuracy, pd.DataFrame):
        return Run(name, ledger, test_accuracy.copy())
    cks = sorted(int(c) for c in _ledger_df(ledger)["checkpoint"].unique())
    if isinstance(test_accuracy, Mapping):
        tab = pd.DataFrame(
            {"checkpoint": [int(c) for c in test_accuracy], "test_accuracy": [float(v) for v in test_accuracy.values()]}
        )
    else:
        acc = list(test_accuracy)
        if len(acc) != len(cks):
            raise DataError(
                f"run {name!r}: {len(acc)} test accuracies for {len(cks)} ledger checkpoints "
                f"{cks}; give one per checkpoint (NaN to leave one out)"
            )
        tab = pd.DataFrame({"checkpoint": cks, "test_accuracy": [float(a) for a in acc]})
    for key, vals in signals.items():
        vals = list(vals.values()) if isinstance(vals, Mapping) else list(vals)
        if len(vals) != len(tab):
            raise DataError(f"run {name!r}: {key} has {len(vals)} values for {len(tab)} checkpoints")
        tab[key] = vals
    return Run(name, ledger, tab)


def check_run(run: Run) -> list[str]:
    """Validate one run; return notes on what is left out. Raise on anything that would mislead.

    Checks: the checkpoint table has ``checkpoint`` and ``test_accuracy``; the ledger's
    checkpoints and the table's line up one to one (and their ``step`` values agree when both have
    one); every checkpoint of the ledger covers the same example ids; no example has a NaN
    perplexity where it was measured.
    """
    who = f"run {run.name!r}" + (f" ({run.source})" if run.source else "")
    df = run.df
    tab = run.checkpoints
    missing = [c for c in ("checkpoint", "test_accuracy") if c not in tab.columns]
    if missing:
        raise DataError(
            f"{who}: the checkpoint table lacks column(s) {missing}; it needs one row per "
            "checkpoint with 'checkpoint' (1-based, as in the ledger) and 'test_accuracy'"
        )
    for col in ("example_id", "checkpoint", "perplexity"):
        if col not in df.columns:
            raise DataError(f"{who}: the ledger lacks column {col!r} (see docs/LEDGER.md)")
    # values read from a user's table: a string or a percentage must not be fitted as an accuracy
    readback.check_accuracy_column(tab["test_accuracy"], f"{who}: the checkpoint table's test_accuracy")
    readback.check_numeric_columns(tab, ["checkpoint", "step", *METRICS], f"{who}: the checkpoint table")
    if (tab["checkpoint"].isna() | (tab["checkpoint"] != tab["checkpoint"].round())).any():
        raise DataError(f"{who}: the checkpoint table's 'checkpoint' column must hold whole numbers (1, 2, ...)")
    if tab["checkpoint"].duplicated().any():
        dup = sorted(tab.loc[tab["checkpoint"].duplicated(), "checkpoint"].unique().tolist())
        raise DataError(f"{who}: checkpoint(s) {dup} appear more than once in the checkpoint table")
    led_ck = set(int(c) for c in df["checkpoint"].unique())
    tab_ck = set(int(c) for c in tab["checkpoint"])
    if led_ck != tab_ck:
        parts = []
        if tab_ck - led_ck:
            parts.append(f"checkpoint(s) {sorted(tab_ck - led_ck)} have a test accuracy but no ledger rows")
        if led_ck - tab_ck:
            parts.append(
                f"checkpoint(s) {sorted(led_ck - tab_ck)} are in the ledger but have no test "
                "accuracy (add them; use NaN to leave one out of the fit)"
            )
        raise DataError(f"{who}: checkpoints do not line up: " + "; ".join(parts))
    if "step" in tab.columns and "step" in df.columns:
        led_steps = df.groupby("checkpoint")["step"].first()
        for _, row in tab.iterrows():
            s = row["step"]
            if pd.notna(s) and int(led_steps.loc[int(row["checkpoint"])]) != int(s):
                raise DataError(
                    f"{who}: checkpoint {int(row['checkpoint'])} is step "
                    f"{int(led_steps.loc[int(row['checkpoint'])])} in the ledger but step "
                    f"{int(s)} in the checkpoint table; they describe different checkpoints"
                )
    ids = df.groupby("checkpoint")["example_id"].apply(lambda s: frozenset(s.astype(str)))
    first = ids.iloc[0]
    for ck, got in ids.items():
        if got != first:
            extra, lost = sorted(got - first), sorted(first - got)
            raise DataError(
                f"{who}: checkpoint {ck} covers different example ids than checkpoint {ids.index[0]} "
                f"({len(lost)} missing, e.g. {lost[:3]}; {len(extra)} extra, e.g. {extra[:3]}); a ledger "
                "must hold every example at every checkpoint"
            )
    if df.duplicated(["example_id", "checkpoint"]).any():
        raise DataError(f"{who}: the ledger has duplicate (example_id, checkpoint) rows")
    nan = df["perplexity"].isna()
    if nan.any():
        bad = df.loc[nan, ["example_id", "checkpoint"]].head(3).values.tolist()
        raise DataError(
            f"{who}: {int(nan.sum())} ledger row(s) have a NaN perplexity (e.g. "
            f"{bad}); PreMemAcc needs every perplexity: re-measure them or drop those "
            "examples with `drop_nan_examples(run)`"
        )
    notes = []
    na = tab["test_accuracy"].isna()
    if na.any():
        notes.append(
            f"{who}: checkpoint(s) {sorted(tab.loc[na, 'checkpoint'].astype(int))} have no test "
            "accuracy (NaN) and are left out of every fit"
        )
    return notes


def drop_nan_examples(run: Run) -> tuple[Run, str | None]:
    """Drop examples with a NaN perplexity at any checkpoint; return the new run and a note."""
    df = run.df
    bad = set(df.loc[df["perplexity"].isna(), "example_id"])
    if not bad:
        return run, None
    kept = df[~df["example_id"].isin(bad)].reset_index(drop=True)
    total = df["example_id"].nunique()
    if kept.empty:
        raise DataError(f"run {run.name!r}: every example has a NaN perplexity; nothing left to analyse")
    new = Run(run.name, kept, run.checkpoints, run.confidences, run.source, dict(run.meta))
    return new, (
        f"run {run.name!r}: {len(bad)} of {total} examples dropped for NaN perplexities "
        f"(e.g. {sorted(map(str, bad))[:3]})"
    )


# ----------------------------------------------------------------------------- metrics


def _per_checkpoint(values: Any, what: str) -> pd.Series:
    """Normalise a per-checkpoint result of curator.dynamics.metrics to a Series by checkpoint."""
    if isinstance(values, pd.DataFrame):
        if "checkpoint" in values.columns:
            values = values.set_index("checkpoint")
        num = [c for c in values.columns if c not in ("step", "epoch")]
        if len(num) != 1:
            raise TypeError(f"{what}: expected one value column, got {list(values.columns)}")
        values = values[num[0]]
    if isinstance(values, Mapping):
        values = pd.Series(values)
    s = pd.Series(values, dtype=float)
    s.index = s.index.astype(int)
    return s


def atc_per_checkpoint(conf: pd.DataFrame) -> pd.Series:
    """ATC prediction per checkpoint from a confidence table (train = source, test = target)."""
    missing = [c for c in CONFIDENCE_COLUMNS if c not in conf.columns]
    if missing:
        raise DataError(
            f"confidence table lacks column(s) {missing}; need {list(CONFIDENCE_COLUMNS)} and 'accuracy' on train rows"
        )
    out = {}
    for ck, g in conf.groupby("checkpoint"):
        src = g[g["split"] == "train"]
        tgt = g[g["split"] == "test"]
        if src.empty or tgt.empty:
            out[int(ck)] = float("nan")
            continue
        if "accuracy" not in src.columns or src["accuracy"].isna().any():
            raise DataError(
                f"confidence table, checkpoint {ck}: train rows need an 'accuracy' value "
                "(fraction of that example's samples graded correct)"
            )
        out[int(ck)] = atc_predict(
            src["confidence"].to_numpy(), float(src["accuracy"].mean()), tgt["confidence"].to_numpy()
        )
    return pd.Series(out, dtype=float)


def _dataset_premem(ledger: Any, p: float) -> pd.Series:
    return _per_checkpoint(metrics.dataset_premem(ledger, p), "dataset_premem")


def _train_accuracy(ledger: Any) -> pd.Series:
    return _per_checkpoint(metrics.train_accuracy(ledger), "train_accuracy")


_ROUTING_CACHE: dict[int, tuple[Any, pd.DataFrame]] = {}


def _routing_per_checkpoint(ledger: Any) -> pd.DataFrame | None:
    """Pathway distance and consistency per checkpoint, or None for a ledger without routing.

    Computed once per ledger object: the p sweep rebuilds the metric table for every p.
    """

    if not routing.has_routing(ledger):
        return None
    hit = _ROUTING_CACHE.get(id(ledger))
    if hit is None or hit[0] is not ledger:
        table = routing.routing_metrics(ledger, routing.routing_settings_from(ledger)).set_index("checkpoint")
        _ROUTING_CACHE.clear()  # one analysis at a time; never hold old ledgers alive
        hit = _ROUTING_CACHE[id(ledger)] = (ledger, table)
    return hit[1]


def _as_ledger(run: Run) -> Any:
    """The run's ledger as a Ledger object when the dynamics module can build one."""
    if hasattr(run.ledger, "df"):
        return run.ledger

    return Ledger(run.ledger)


def metric_table(runs: Sequence[Run], p: float, check: bool = True) -> pd.DataFrame:
    """One row per (run, checkpoint): every metric and the test accuracy.

    Columns: run, checkpoint, step, epoch, premem, train_accuracy, train_loss, grad_variance,
    dist_from_init, atc, pathway_distance, pathway_consistency, test_accuracy (NaN where a run does
    not provide that signal).
    """
    if not runs:
        raise CuratorError("no runs given; pass run directories, a sweep directory or Run objects")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CuratorError(f"run names must be unique; repeated: {dup}")
    frames = []
    for run in runs:
        if check:
            check_run(run)
        led = _as_ledger(run)
        tab = run.checkpoints.copy()
        tab["checkpoint"] = tab["checkpoint"].astype(int)
        tab = tab.set_index("checkpoint").sort_index()
        out = pd.DataFrame(index=tab.index)
        out.insert(0, "run", run.name)
        df = run.df
        for col in ("step", "epoch"):
            if col in df.columns:
                out[col] = df.groupby("checkpoint")[col].first().reindex(out.index)
            elif col in tab.columns:
                out[col] = tab[col]
        out["premem"] = _dataset_premem(led, p).reindex(out.index)
        out["train_accuracy"] = _train_accuracy(led).reindex(out.index)
        for col in CHECKPOINT_SIGNALS:
            out[col] = tab[col].astype(float) if col in tab.columns else np.nan
        if run.confidences is not None and len(run.confidences):
            out["atc"] = atc_per_checkpoint(run.confidences).reindex(out.index)
        elif "atc" in tab.columns:
            out["atc"] = tab["atc"].astype(float)
        else:
            out["atc"] = np.nan
        rt = _routing_per_checkpoint(led)
        for col in ("pathway_distance", "pathway_consistency"):
            out[col] = rt[col].reindex(out.index).astype(float) if rt is not None else np.nan
        out["test_accuracy"] = tab["test_accuracy"].astype(float)
        frames.append(out.reset_index())
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- report


@dataclass
class MetricResult:
    """One metric's fit against test accuracy (``fit`` is None when it could not be fitted)."""

    metric: str
    label: str
    fit: Fit | None
    note: str = ""


@dataclass
class PredictionReport:
    """Result of `predict`: the point table, ranked fits, the p sweep and every exclusion."""

    p: float
    table: pd.DataFrame
    results: list[MetricResult]
    p_sweep: pd.DataFrame
    exclusions: list[str]

    def result(self, metric: str) -> MetricResult:
        for r in self.results:
            if r.metric == metric:
                return r
        raise KeyError(metric)

    @property
    def best_p(self) -> float:
        ok = self.p_sweep.dropna(subset=["r2"])
        return float(ok.loc[ok["r2"].idxmax(), "p"]) if len(ok) else float("nan")

    def ranking(self) -> pd.DataFrame:
        rows = []
        for rank, r in enumerate(self.results, 1):
            f = r.fit
            rows.append(
                {
                    "rank": rank if f else None,
                    "metric": r.metric,
                    "label": r.label,
                    "r2": f.r2 if f else np.nan,
                    "r2_lo": f.r2_ci[0] if f else np.nan,
                    "r2_hi": f.r2_ci[1] if f else np.nan,
                    "slope": f.slope if f else np.nan,
                    "slope_lo": f.slope_ci[0] if f else np.nan,
                    "slope_hi": f.slope_ci[1] if f else np.nan,
                    "intercept": f.intercept if f else np.nan,
                    "r": f.r if f else np.nan,
                    "n": f.n if f else 0,
                    "note": r.note,
                }
            )
        return pd.DataFrame(rows)

    def to_markdown(self, images: Mapping[str, str] | None = None) -> str:
        def num(v: float, fmt: str = ".3f") -> str:
            return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        n_runs = self.table["run"].nunique()
        lines = [
            "# Predicting test accuracy from training dynamics",
            "",
            f"{len(self.table)} points (run × checkpoint) from {n_runs} run(s); "
            f"PreMemAcc at p = {self.p:g}. Metrics ranked by R² of a least-squares line "
            "against test accuracy (95% bootstrap intervals).",
            "",
            "| rank | metric | R² | R² 95% CI | slope | slope 95% CI | intercept | n | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, row in self.ranking().iterrows():
            rank = "–" if pd.isna(row["rank"]) else str(int(row["rank"]))

            def ci(lo: float, hi: float, fmt: str = ".3f") -> str:
                return "–" if math.isnan(lo) else f"[{num(lo, fmt)}, {num(hi, fmt)}]"

            lines.append(
                f"| {rank} | {row['label']} | {num(row['r2'])} | {ci(row['r2_lo'], row['r2_hi'])} "
                f"| {num(row['slope'], '.4g')} | {ci(row['slope_lo'], row['slope_hi'], '.4g')} "
                f"| {num(row['intercept'], '.4g')} | {int(row['n'])} | {row['note']} |"
            )
        lines += [
            "",
            "## R² of PreMemAcc against test accuracy, by threshold p",
            "",
            "| p | R² | slope | n | note |",
            "| --- | --- | --- | --- | --- |",
        ]
        for _, row in self.p_sweep.iterrows():
            lines.append(
                f"| {row['p']:g} | {num(row['r2'])} | {num(row['slope'], '.4g')} | {int(row['n'])} | {row['note']} |"
            )
        if not math.isnan(self.best_p):
            lines += ["", f"Best p in the grid: {self.best_p:g}."]
        lines += ["", "## Exclusions", ""]
        lines += [f"- {e}" for e in self.exclusions] or ["None: every point was used."]
        if images:
            lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in images.items()]
        return "\n".join(lines) + "\n"


def _fit_metric(table: pd.DataFrame, metric: str, n_boot: int, seed: int) -> tuple[Fit | None, str]:
    x = table[metric].to_numpy(dtype=float)
    y = table["test_accuracy"].to_numpy(dtype=float)
    if np.isnan(x).all():
        return None, "not available in these runs"
    try:
        fit = linear_fit(x, y, n_boot=n_boot, seed=seed, what=METRICS.get(metric, metric))
    except CuratorError as e:
        note = str(e).split(": ", 1)[-1]
        return None, note.replace("x is constant", "constant").replace("y is constant", "test accuracy is constant")
    missing_x = np.isnan(x) & ~np.isnan(y)
    note = ""
    if missing_x.any():
        note = f"{int(missing_x.sum())} point(s) without this metric left out"
        if metric in ("premem", "train_accuracy"):
            # the dynamics metrics return NaN exactly where lazy tracking skipped samples
            note += " (undetermined in lazily tracked ledgers: track with dynamics.lazy=false)"
    return fit, note


def predict(
    runs: Sequence[Run],
    p: float = 1.105,
    p_grid: Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    drop_nan: bool = False,
) -> PredictionReport:
    """Fit every metric against test accuracy over all (run, checkpoint) points; sweep p.

    Args:
        runs: the runs (see `Run`, `load_run`, `find_runs`).
        p: the perplexity threshold for PreMemAcc in the metric ranking.
        p_grid: thresholds for the p sweep (default `DEFAULT_P_GRID`; p itself is always added).
        drop_nan: drop examples with NaN perplexities (reported) instead of refusing the run.

    Raises:
        CuratorError: runs that do not line up, or fewer than 3 points with a test accuracy and a
            PreMemAcc (other metrics with too few points are reported, not raised).
    """
    if p <= 1:
        raise CuratorError(f"p must be > 1 (a perplexity threshold), got {p}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise CuratorError(f"n_boot must be a whole number >= 0 (0: no intervals), got {n_boot!r}")
    exclusions: list[str] = []
    checked = []
    for run in runs:
        exclusions.extend(run.meta.get("notes", []))
        if drop_nan:
            run, note = drop_nan_examples(run)
            if note:
                exclusions.append(note)
        exclusions.extend(check_run(run))
        checked.append(run)
    table = metric_table(checked, p, check=False)
    usable = table["test_accuracy"].notna()
    if int(usable.sum()) < 3:
        raise CuratorError(
            f"only {int(usable.sum())} (run, checkpoint) point(s) have a test accuracy; "
            "a fit needs at least 3: add runs or checkpoints"
        )

    results = []
    for metric, label in METRICS.items():
        fit, note = _fit_metric(table, metric, n_boot, seed)
        if metric == "premem":
            label = f"PreMemAcc (p={p:g})"
            if fit is None:
                raise CuratorError(f"PreMemAcc at p={p:g}: {note}")
        results.append(MetricResult(metric, label, fit, note))
    results.sort(key=lambda r: -r.fit.r2 if r.fit else math.inf)

    grid = sorted(set(float(v) for v in (p_grid if p_grid is not None else DEFAULT_P_GRID)) | {float(p)})
    bad = [g for g in grid if g <= 1]
    if bad:
        raise CuratorError(f"p grid values must be > 1, got {bad}")
    rows = []
    for g in grid:
        sub = table[["test_accuracy"]].copy()
        sub["premem"] = table["premem"] if g == p else metric_table(checked, g, check=False)["premem"]
        fit, note = _fit_metric(sub, "premem", n_boot=0, seed=seed)
        rows.append(
            {
                "p": g,
                "r2": fit.r2 if fit else np.nan,
                "slope": fit.slope if fit else np.nan,
                "intercept": fit.intercept if fit else np.nan,
                "n": fit.n if fit else 0,
                "note": note,
            }
        )
    return PredictionReport(p=float(p), table=table, results=results, p_sweep=pd.DataFrame(rows), exclusions=exclusions)


def _fig(nrows: int = 1, ncols: int = 1, size=(5.0, 4.0)):
    # the object API with an Agg canvas: no pyplot global state, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def write_report(report: PredictionReport, out_dir: str | Path) -> dict[str, Path]:
    """Write scatter plots (one per fitted metric), the p-sweep plot, report.md and the tables.

    Returns the written paths by name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}
    runs = list(dict.fromkeys(report.table["run"]))
    colours = {r: f"C{i % 10}" for i, r in enumerate(runs)}
    for res in report.results:
        if res.fit is None:
            continue
        fig = _fig()
        ax = fig.add_subplot(111)
        for run in runs:
            t = report.table[report.table["run"] == run]
            ax.scatter(
                t[res.metric], t["test_accuracy"], color=colours[run], s=22, label=run if len(runs) <= 12 else None
            )
        xs = report.table[res.metric].dropna()
        line_x = np.linspace(float(xs.min()), float(xs.max()), 50)
        ax.plot(line_x, res.fit.predict(line_x), color="k", lw=1)
        ax.set_xlabel(res.label)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{res.label}: R² = {res.fit.r2:.3f} (n = {res.fit.n})", fontsize=9)
        if len(runs) <= 12:
            ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        path = out / f"scatter_{res.metric}.png"
        fig.savefig(path)
        paths[f"scatter_{res.metric}"] = path
        images[res.label] = path.name

    fig = _fig()
    ax = fig.add_subplot(111)
    ps = report.p_sweep
    ax.plot(ps["p"], ps["r2"], marker="o")
    ax.axvline(report.p, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("perplexity threshold p")
    ax.set_ylabel("R² (PreMemAcc vs test accuracy)")
    ax.set_ylim(0, 1.02)
    ax.set_title("R² by memorization threshold", fontsize=9)
    fig.tight_layout()
    paths["p_sweep_png"] = out / "p_sweep.png"
    fig.savefig(paths["p_sweep_png"])
    images["p sweep"] = "p_sweep.png"

    paths["metric_table"] = out / "metric_table.csv"
    report.table.to_csv(paths["metric_table"], index=False)
    paths["ranking"] = out / "ranking.csv"
    report.ranking().to_csv(paths["ranking"], index=False)
    paths["p_sweep"] = out / "p_sweep.csv"
    report.p_sweep.to_csv(paths["p_sweep"], index=False)
    paths["report"] = out / "report.md"
    paths["report"].write_text(report.to_markdown(images))
    return paths


# ----------------------------------------------------------------------------- loading


def _read_checkpoint_table(path: Path) -> pd.DataFrame:
    """checkpoints.csv or checkpoints.json (a list of records, ``{"checkpoints": [...]}``, or a
    mapping checkpoint -> record); the values are checked by `check_run`."""

    if path.suffix == ".csv":
        try:
            tab = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
            raise DataError(f"{path} is not a readable CSV table ({' '.join(str(e).split())[:120]})") from None
        missing = [c for c in ("checkpoint", "test_accuracy") if c not in tab.columns]
        if missing:
            raise DataError(
                f"{path} has no column(s) {missing} (its header reads {list(tab.columns)[:5]}); it needs "
                "one row per checkpoint with 'checkpoint' and 'test_accuracy'"
            )
        return tab
    data = read_json(path)
    if isinstance(data, Mapping):
        data = data.get("checkpoints", data)
    if isinstance(data, Mapping):  # {"1": {...}, "2": {...}} keyed by checkpoint
        if not all(str(k).isdigit() and isinstance(v, Mapping) for k, v in data.items()):
            raise DataError(f"{path}: a mapping of checkpoints needs keys 1, 2, ... and a record (object) each")
        data = [dict(v, checkpoint=int(k)) for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(x, Mapping) for x in data):
        raise DataError(f"{path}: expected a list of per-checkpoint records (JSON objects)")
    return pd.DataFrame(data)


def _read_ledger_dropping_nan(path: Path) -> tuple[Any, str | None]:
    """Read a ledger file, dropping examples with NaN perplexities (which `read_ledger` refuses)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for non-Parquet input
        raise DataError(f"{path} is not a readable Parquet file ({' '.join(str(e).split())[:120]})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    df = table.to_pandas()
    if "perplexity" not in df.columns and "target_nll" in df.columns:
        df["perplexity"] = np.exp(df["target_nll"].astype(float))
    run, note = drop_nan_examples(Run(path.parent.name, df, pd.DataFrame()))
    try:
        meta = readback.check_ledger_meta(json.loads(raw), path) if raw else {}
    except ValueError:
        raise DataError(f"{path}: metadata key 'curator.ledger' is not valid JSON") from None
    return Ledger(run.df, meta), note


def load_run(path: str | Path, name: str | None = None, drop_nan: bool = False) -> Run:
    """A run from a curator run directory.

    The directory holds ``ledger.parquet`` (docs/LEDGER.md), ``checkpoints.csv`` or
    ``checkpoints.json`` (one record per checkpoint with ``checkpoint`` and ``test_accuracy``),
    and optionally ``confidences.parquet`` for ATC and ``run.json`` (the run's settings).
    ``drop_nan`` drops examples with NaN perplexities; the note lands in ``run.meta["notes"]``.
    """
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory; a run directory holds ledger.parquet and checkpoints.csv")
    led_path = d / "ledger.parquet"
    if not led_path.exists():
        raise DataError(f"{d}: no ledger.parquet; is this a curator run directory?")
    tab_path = next((d / f for f in ("checkpoints.csv", "checkpoints.json") if (d / f).exists()), None)
    if tab_path is None:
        raise DataError(f"{d}: no checkpoints.csv or checkpoints.json with the test accuracy per checkpoint")

    conf_path = d / "confidences.parquet"
    meta_path = d / "run.json"
    meta = dict(readback.mapping(read_json(meta_path), str(meta_path))) if meta_path.exists() else {}
    if drop_nan:
        ledger, note = _read_ledger_dropping_nan(led_path)
        if note:
            meta["notes"] = list(meta.get("notes", [])) + [note.replace(f"run {d.name!r}", f"run {name or d.name!r}")]
    else:
        ledger = read_ledger(led_path)
    return Run(
        name=name or d.name,
        ledger=ledger,
        checkpoints=_read_checkpoint_table(tab_path),
        confidences=pd.read_parquet(conf_path) if conf_path.exists() else None,
        source=str(d),
        meta=meta,
    )


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run directories (those holding ledger.parquet) directly under ``sweep_dir``, sorted."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise DataError(f"{d}: sweep directory not found")
    found = sorted(p.parent for p in d.glob("*/ledger.parquet"))
    if not found:
        raise DataError(f"{d}: no run directories (sub-directories with ledger.parquet) found")
    return found


def write_run(run: Run, out_dir: str | Path) -> Path:
    """Write a run directory that `load_run` reads back."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    _as_ledger(run).to_parquet(d / "ledger.parquet")  # a Ledger validates and keeps its metadata
    run.checkpoints.to_csv(d / "checkpoints.csv", index=False)
    if run.confidences is not None:
        run.confidences.to_parquet(d / "confidences.parquet", index=False)
    if run.meta:
        (d / "run.json").write_text(json.dumps(run.meta, indent=2, default=str))
    return d


def runs_from_mlflow(
    run_ids: Iterable[str] | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    artifact_path: str = "",
) -> list[Run]:
    """Runs whose MLflow artifacts hold a run directory (ledger.parquet + checkpoints.csv/json).

    Give run ids, or an experiment name (every finished run in it that has the artifacts).
    ``artifact_path`` is the folder inside each run's artifacts that holds the files.
    """
    import tempfile

    mlflow = require("mlflow", "dev", "reading runs from MLflow")
    client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
    ids = list(run_ids or [])
    names: dict[str, str] = {}
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise CuratorError(f"MLflow experiment {experiment!r} not found at {tracking_uri or 'the default URI'}")
        for r in client.search_runs([exp.experiment_id]):
            ids.append(r.info.run_id)
            names[r.info.run_id] = r.info.run_name or r.info.run_id
    if not ids:
        raise CuratorError("give MLflow run ids or an experiment name")
    runs = []
    tmp = Path(tempfile.mkdtemp(prefix="curator-mlflow-"))
    for rid in ids:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=rid, artifact_path=artifact_path or None, dst_path=str(tmp / rid), tracking_uri=tracking_uri
            )
        except Exception as e:  # noqa: BLE001 - MLflow raises many types; the message is what matters
            if experiment is not None and not run_ids:
                continue  # experiments also hold runs of other kinds; skip those
            raise CuratorError(f"MLflow run {rid}: cannot download artifacts '{artifact_path}' ({e})") from e
        if not (Path(local) / "ledger.parquet").exists():
            if experiment is not None and not run_ids:
                continue
            raise CuratorError(f"MLflow run {rid}: artifacts '{artifact_path or '/'}' hold no ledger.parquet")
        run = load_run(local, name=names.get(rid) or client.get_run(rid).info.run_name or rid)
        run.source = f"mlflow:{rid}"
        runs.append(run)
    if not runs:
        raise CuratorError(f"no run in MLflow experiment {experiment!r} has a ledger.parquet artifact")
    return runs
