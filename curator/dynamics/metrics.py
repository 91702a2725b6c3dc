"""Pure functions over a ledger: PreMemAcc and the other per-example learning-dynamics signals.

Definitions (Kang et al., arXiv 2411.07681; DESIGN §1), for example i at checkpoint m:

    Acc_m        = n_correct / n_samples
    MaskedAcc_m  = Acc_m * 1[perplexity_m > p]
    PreMemAcc_m  = min( max_{m' <= m} MaskedAcc_m', Acc_m )

The threshold p is an argument everywhere, so it can be swept without re-measuring.

How skipped cells are read (lazy ledgers). A cell with a ``skip_reason`` holds n_correct correct
out of n_samples < k drawn; its accuracy is only known to lie in
``[n_correct / k, (n_correct + k - n_samples) / k]`` (the missing samples all wrong / all right).
Every metric here carries these bounds through and returns a point value only where the bounds
meet; elsewhere it returns NaN (``premem_bounds`` / ``accuracy_bounds`` give the bounds). The lazy
tracker skips only where that cannot matter, so at the recorded p the final checkpoint's PreMemAcc
is always determined and equal to what full tracking gives. Intermediate checkpoints of a lazy
ledger are generally not determined (an example memorized there was not sampled): their
PreMemAcc is NaN with bounds [lo, hi]. A different p than the one tracked with may leave even the
final checkpoint undetermined (NaN) — sweep p on fully tracked or imported ledgers.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from curator.dynamics.ledger import Ledger
from curator.errors import ConfigError

_EXACT = 1e-12


def _p(ledger: Ledger, p: float | None) -> float:
    p = ledger.p if p is None else p
    if p is None:
        raise ConfigError("no threshold p given and the ledger records none; pass p (e.g. 1.105)")
    if not p > 1:
        raise ConfigError(f"threshold p must be > 1 (perplexity is >= 1), got {p}")
    return float(p)


def _point(lo: pd.DataFrame, hi: pd.DataFrame) -> pd.DataFrame:
    return lo.where(np.isclose(lo, hi, rtol=0, atol=_EXACT))


def accuracy_bounds(ledger: Ledger) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lower and upper bounds of Acc per [example_id x checkpoint] (equal for complete cells)."""
    c = ledger.pivot("n_correct").astype(float)
    s = ledger.pivot("n_samples").astype(float)
    skipped = ledger.pivot("skip_reason").notna()
    k = float(ledger.k)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = c / s
    lo = exact.where(~skipped, c / k)
    hi = exact.where(~skipped, (c + k - s) / k)
    return lo, hi


def accuracy(ledger: Ledger) -> pd.DataFrame:
    """Acc per [example_id x checkpoint]; NaN where a lazy skip left it undetermined."""
    return _point(*accuracy_bounds(ledger))


def masked_acc(ledger: Ledger, p: float | None = None) -> pd.DataFrame:
    """MaskedAcc = Acc * 1[perplexity > p]; exactly 0 for memorized cells even if not sampled."""
    p = _p(ledger, p)
    keep = (ledger.pivot("perplexity") > p).astype(float)
    lo, hi = accuracy_bounds(ledger)
    return _point(lo * keep, hi * keep)


def premem_bounds(ledger: Ledger, p: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lower and upper bounds of PreMemAcc per [example_id x checkpoint]."""
    p = _p(ledger, p)
    keep = (ledger.pivot("perplexity") > p).astype(float)
    a_lo, a_hi = accuracy_bounds(ledger)
    # running max over checkpoints in order (pivot columns are sorted)
    r_lo = (a_lo * keep).cummax(axis=1)
    r_hi = (a_hi * keep).cummax(axis=1)
    return np.minimum(r_lo, a_lo), np.minimum(r_hi, a_hi)


def premem_acc(ledger: Ledger, p: float | None = None) -> pd.DataFrame:
    """PreMemAcc per [example_id x checkpoint]; NaN where lazy tracking left it undetermined."""
    return _point(*premem_bounds(ledger, p))


def dataset_premem(ledger: Ledger, p: float | None = None) -> pd.Series:
    """Dataset-level PreMemAcc per checkpoint (mean over examples; NaN if any is undetermined)."""
    return premem_acc(ledger, p).mean(axis=0, skipna=False).rename("premem_acc")


def train_accuracy(ledger: Ledger) -> pd.Series:
    """Mean sampled accuracy per checkpoint (NaN at checkpoints with undetermined cells)."""
    return accuracy(ledger).mean(axis=0, skipna=False).rename("train_acc")


def fraction_memorized(ledger: Ledger, p: float | None = None) -> pd.Series:
    """Fraction of examples with perplexity <= p, per checkpoint."""
    p = _p(ledger, p)
    return (ledger.pivot("perplexity") <= p).mean(axis=0).rename("fraction_memorized")


def memorization_epoch(ledger: Ledger, p: float | None = None) -> pd.Series:
    """Epoch of the first checkpoint at which perplexity <= p, per example (NaN: never)."""
    p = _p(ledger, p)
    return _first_epoch(ledger, ledger.pivot("perplexity") <= p, pd.DataFrame(False, *_axes(ledger)))


def _axes(ledger: Ledger):
    return ledger.example_ids, ledger.checkpoints


def _first_epoch(ledger: Ledger, known_true: pd.DataFrame, unknown: pd.DataFrame) -> pd.Series:
    epochs = ledger.checkpoint_info()["epoch"].to_numpy()
    out = np.full(len(known_true), np.nan)
    t, u = known_true.to_numpy(), unknown.to_numpy()
    for i in range(len(out)):
        hits = np.flatnonzero(t[i])
        if len(hits) and not u[i, : hits[0]].any():
            out[i] = epochs[hits[0]]
    return pd.Series(out, index=known_true.index, name="epoch")


def _correctness(ledger: Ledger, criterion: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(known correct, unknown) per cell; correct means Acc > 0 ("any") or Acc > 1/2 ("majority")."""
    if criterion not in ("any", "majority"):
        raise ConfigError(f"criterion must be 'any' or 'majority', got {criterion!r}")
    thr = 0.0 if criterion == "any" else 0.5
    lo, hi = accuracy_bounds(ledger)
    known_true = lo > thr + _EXACT
    known_false = hi <= thr + _EXACT
    return known_true, ~(known_true | known_false)


def first_correct_epoch(ledger: Ledger, criterion: str = "any") -> pd.Series:
    """Epoch of the first checkpoint at which the example is answered correctly, per example.

    ``criterion="any"``: at least one sampled answer correct; ``"majority"``: more than half.
    NaN when never correct, or when a lazily skipped earlier cell leaves the first one unknown.
    """
    known_true, unknown = _correctness(ledger, criterion)
    return _first_epoch(ledger, known_true, unknown).rename("first_correct_epoch")


def forgetting_events(ledger: Ledger, criterion: str = "majority") -> pd.Series:
    """Number of correct -> incorrect transitions between consecutive checkpoints, per example.

    Correct is judged per checkpoint by ``criterion`` (default: a majority of the samples are
    correct, so one unlucky sample out of k does not count as forgetting). Examples with any
    undetermined cell (lazy ledgers) get NaN: forgetting needs full tracking.
    """
    known_true, unknown = _correctness(ledger, criterion)
    c = known_true.to_numpy()
    events = (c[:, :-1] & ~c[:, 1:]).sum(axis=1).astype(float)
    events[unknown.to_numpy().any(axis=1)] = np.nan
    return pd.Series(events, index=known_true.index, name="forgetting_events")


def cartography(ledger: Ledger) -> pd.DataFrame:
    """Dataset-cartography coordinates (Swayamdipta et al., 2020) per example.

    confidence: mean over checkpoints of the per-token target probability exp(-target_nll) (the
    geometric-mean probability of the target's tokens, the generative analogue of the gold-label
    probability); variability: its standard deviation over checkpoints (population, ddof=0, as
    in the paper's code); correctness: mean sampled accuracy over checkpoints (NaN if any cell
    is undetermined).
    """
    prob = np.exp(-ledger.pivot("target_nll"))
    return pd.DataFrame(
        {
            "confidence": prob.mean(axis=1),
            "variability": prob.std(axis=1, ddof=0),
            "correctness": accuracy(ledger).mean(axis=1, skipna=False),
        }
    )


def summary(ledger: Ledger, p: float | None = None) -> pd.DataFrame:
    """One row per checkpoint: dataset PreMemAcc (with bounds), train accuracy (with bounds),
    fraction memorized, mean perplexity, samples drawn and cells skipped."""
    p = _p(ledger, p)
    pm_lo, pm_hi = premem_bounds(ledger, p)
    a_lo, a_hi = accuracy_bounds(ledger)
    info = ledger.checkpoint_info()
    out = pd.DataFrame(
        {
            "step": info["step"],
            "epoch": info["epoch"],
            "premem_acc": dataset_premem(ledger, p),
            "premem_acc_lo": pm_lo.mean(axis=0),
            "premem_acc_hi": pm_hi.mean(axis=0),
            "train_acc": train_accuracy(ledger),
            "train_acc_lo": a_lo.mean(axis=0),
            "train_acc_hi": a_hi.mean(axis=0),
            "fraction_memorized": fraction_memorized(ledger, p),
            "mean_perplexity": ledger.pivot("perplexity").mean(axis=0),
            "samples_drawn": ledger.pivot("n_samples").sum(axis=0),
            "cells_skipped": ledger.pivot("skip_reason").notna().sum(axis=0),
        }
    )
    out.index.name = "checkpoint"
    return out


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (nats) of the empirical distribution of answers; no answer (None) is one outcome."""
    if not answers:
        return 0.0
    counts = Counter(None if a is None else str(a).strip() for a in answers)
    n = len(answers)
    return float(-sum(c / n * math.log(c / n) for c in counts.values()))
