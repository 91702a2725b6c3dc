"""Robustness probes: does a training query stay solved when the response must start differently?

DESIGN §1, claim 2: examples with low PreMemAcc are the ones whose correct answers break under a
small perturbation of the response. For each training query we sample k completions of

    prompt + lead + prefix          (lead = the whitespace the target template starts with)

and grade ``prefix + completion``; the unperturbed condition samples the plain prompt. Accuracies
are then averaged per PreMemAcc bucket.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.analysis.predict import _fig
from curator.dynamics import metrics
from curator.errors import CuratorError
from curator.sampling.base import SamplingParams

DEFAULT_PREFIXES = ("First", "We know that")
DEFAULT_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
UNPERTURBED = "unperturbed"


def _lead(fmt: Any) -> str:
    """Whitespace before the first field of the target template (" " for " {solution}\\nDone.")."""
    m = re.match(r"\s*", fmt.target)
    return m.group(0) if m else ""


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """Half-open buckets [a, b), the last one closed [a, b]."""
    n = len(edges) - 1
    return [f"[{edges[i]:g}, {edges[i + 1]:g}{']' if i == n - 1 else ')'}" for i in range(n)]


def assign_buckets(values: Sequence[float], edges: Sequence[float] = DEFAULT_EDGES) -> list[str]:
    """Bucket label per value; values outside [edges[0], edges[-1]] or NaN raise CuratorError."""
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2 or not (np.diff(e) > 0).all():
        raise CuratorError(f"bucket edges must be at least two increasing numbers, got {list(edges)}")
    v = np.asarray(values, dtype=float)
    bad = np.isnan(v) | (v < e[0]) | (v > e[-1])
    if bad.any():
        raise CuratorError(
            f"{int(bad.sum())} PreMemAcc value(s) are NaN or outside [{e[0]:g}, {e[-1]:g}], e.g. {v[bad][:3].tolist()}"
        )
    idx = np.searchsorted(e, v, side="right") - 1
    idx = np.minimum(idx, e.size - 2)  # the top edge belongs to the last bucket
    labels = bucket_labels(edges)
    return [labels[i] for i in idx]


@dataclass
class RobustnessReport:
    """Per-example accuracies and the per-bucket table.

    ``per_example``: example_id, premem, bucket, and one accuracy column per condition
    ("unperturbed" and each prefix). ``table``: bucket, n, and the mean accuracy per condition.
    """

    per_example: pd.DataFrame
    table: pd.DataFrame
    prefixes: tuple[str, ...]
    k: int
    excluded: int = 0

    @property
    def conditions(self) -> list[str]:
        return [UNPERTURBED, *self.prefixes]

    def to_markdown(self, image: str | None = None) -> str:
        cols = ["bucket", "n", *self.conditions]
        head = ["PreMemAcc", "n", "unperturbed", *[f'"{p}…"' for p in self.prefixes]]
        lines = [
            "# Robustness to forced response prefixes",
            "",
            f"Accuracy of k = {self.k} samples per training query when the response is forced "
            "to begin with each prefix, by PreMemAcc bucket.",
            "",
            "| " + " | ".join(head) + " |",
            "|" + " --- |" * len(head),
        ]
        for _, row in self.table[cols].iterrows():
            cells = [str(row["bucket"]), str(int(row["n"]))]
            cells += ["–" if pd.isna(row[c]) else f"{row[c]:.3f}" for c in self.conditions]
            lines.append("| " + " | ".join(cells) + " |")
        if self.excluded:
            lines += ["", f"{self.excluded} example(s) had no PreMemAcc in the ledger and were left out."]
        if image:
            lines += ["", f"![robustness]({image})"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write robustness.csv (buckets), robustness_examples.csv, robustness.png and robustness.md."""

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "table": out / "robustness.csv",
            "per_example": out / "robustness_examples.csv",
            "plot": out / "robustness.png",
            "report": out / "robustness.md",
        }
        self.table.to_csv(paths["table"], index=False)
        self.per_example.to_csv(paths["per_example"], index=False)
        fig = _fig(size=(6.0, 4.0))
        ax = fig.add_subplot(111)
        x = np.arange(len(self.table))
        for i, c in enumerate(self.conditions):
            ax.plot(x, self.table[c], marker="o", color=f"C{i}", label=c if c == UNPERTURBED else f'"{c}…"')
        ax.set_xticks(x, [f"{b}\nn={n}" for b, n in zip(self.table["bucket"], self.table["n"])], fontsize=7)
        ax.set_xlabel("PreMemAcc bucket")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(paths["plot"])
        paths["report"].write_text(self.to_markdown(image=paths["plot"].name))
        return paths


def _check_prefixes_encode(tokenizer: Any, lead: str, prefixes: Sequence[str]) -> None:
    """Refuse a prefix the model's tokenizer cannot spell: a word outside a small vocabulary (the
    model organism's) becomes the unknown token, and the 'forced prefix' would be that token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None:
        return
    for prefix in prefixes:
        ids = tokenizer(lead + prefix, add_special_tokens=False)["input_ids"]
        if unk in ids:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise CuratorError(
                f"prefix {prefix!r} is not in the model's vocabulary (it encodes as {pieces}); "
                "choose --prefix words the model can write (for the model organism e.g. 'So' or 'There')"
            )


def robustness(
    sampler: Any,
    examples: Sequence[Any],
    fmt: Any,
    grader: Any,
    premem: pd.Series | Mapping[str, float],
    prefixes: Sequence[str] = DEFAULT_PREFIXES,
    k: int = 4,
    params: Any = None,
    tokenizer: Any = None,
    edges: Sequence[float] = DEFAULT_EDGES,
) -> RobustnessReport:
    """Accuracy per PreMemAcc bucket with and without forced response prefixes.

    Args:
        sampler: a `curator.sampling.base.Sampler` (only ``generate`` is used).
        examples: the training examples (`curator.data.example.Example`).
        fmt: the `PromptFormat` the model was trained with.
        grader: a `Grader` (``is_correct(completion, answer)``).
        premem: PreMemAcc per example id (e.g. the last checkpoint's column of
            `curator.dynamics.metrics.premem_acc`); examples without one are left out and counted.
        prefixes: forced beginnings of the response.
        k: samples per query and condition.
        params: `SamplingParams` (default: the paper's T=0.8, top_p=0.95).
        tokenizer: needed only for chat formats.
    """

    if k < 1:
        raise CuratorError(f"samples per query must be >= 1, got {k}")
    prefixes = tuple(prefixes)
    if not prefixes:
        raise CuratorError("give at least one prefix (e.g. 'First')")
    if any(not p.strip() for p in prefixes):
        raise CuratorError("prefixes must be non-empty text")
    if len(set(prefixes)) != len(prefixes) or UNPERTURBED in prefixes:
        raise CuratorError(f"prefixes must be distinct and not {UNPERTURBED!r}: {list(prefixes)}")
    _check_prefixes_encode(tokenizer, _lead(fmt), prefixes)
    params = params or SamplingParams()
    pm = pd.Series(premem, dtype=float)
    pm.index = pm.index.astype(str)
    kept = [ex for ex in examples if ex.id in pm.index and not math.isnan(pm[ex.id])]
    excluded = len(examples) - len(kept)
    if not kept:
        raise CuratorError(
            f"none of the {len(examples)} examples has a PreMemAcc value; are the data "
            "and the ledger from the same training set?"
        )
    buckets = assign_buckets([pm[ex.id] for ex in kept], edges)
    prompts = [fmt.prompt_text(ex, tokenizer) for ex in kept]
    lead = _lead(fmt)

    per = pd.DataFrame({"example_id": [ex.id for ex in kept], "premem": [pm[ex.id] for ex in kept], "bucket": buckets})
    for cond in (UNPERTURBED, *prefixes):
        forced = "" if cond == UNPERTURBED else cond
        outs = sampler.generate([p + (lead + forced if forced else "") for p in prompts], k, params)
        if len(outs) != len(prompts) or any(len(o) != k for o in outs):
            raise CuratorError(
                f"sampler returned {len(outs)} lists for {len(prompts)} prompts (expected {k} completions each)"
            )
        # grade the response as the model "wrote" it: the forced prefix is part of the answer text
        per[cond] = [
            sum(bool(grader.is_correct(forced + c, ex.answer)) for c in comps) / k for ex, comps in zip(kept, outs)
        ]

    conds = [UNPERTURBED, *prefixes]
    labels = bucket_labels(edges)
    grouped = per.groupby("bucket")
    rows = []
    for b in labels:
        if b in grouped.groups:
            g = grouped.get_group(b)
            rows.append({"bucket": b, "n": len(g), **{c: float(g[c].mean()) for c in conds}})
        else:
            rows.append({"bucket": b, "n": 0, **{c: np.nan for c in conds}})
    return RobustnessReport(per_example=per, table=pd.DataFrame(rows), prefixes=prefixes, k=k, excluded=excluded)


def final_premem(ledger: Any, p: float | None = None) -> pd.Series:
    """PreMemAcc per example at the ledger's last checkpoint."""

    pm = metrics.premem_acc(ledger, p)
    return pm[pm.columns.max()].rename("premem")
