"""Log-probabilities of the probe families, and the probe table that records them over training.

One teacher-forced forward pass per batch gives, at every target position, the log-probability of
the target token and of the most likely token there (the "argmax" token). Summed over the target,
the second is the log-probability of the teacher-forced argmax path — the quantity the squeezing
effect pushes up (Ren & Sutherland, §3.3): when a negative gradient pushes down an unlikely
response, the mass it frees goes mostly to the already most likely token.

The target token's log-probability is what `HFSampler.target_logprobs` returns (the tests check
the two agree); the probe scorer exists because the argmax needs the whole row of logits in the
same pass, which the Sampler protocol does not expose.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curator.data.format import PromptFormat, encode_scoring_pairs
from curator.errors import DataError
from curator.io import atomic_write_bytes

# the probe table: one row per (recipe, evaluation, family, probe); docs/LEDGER.md, "Probe table"
PROBE_COLUMNS = (
    "recipe",
    "stage",
    "stage_index",
    "step",
    "stage_step",
    "epoch",
    "family",
    "probe_id",
    "n_tokens",
    "logprob_sum",
    "logprob_mean",
    "argmax_logprob_sum",
    "argmax_logprob_mean",
)
METRICS = ("logprob_sum", "logprob_mean", "argmax_logprob_sum", "argmax_logprob_mean")


def score_targets(
    model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(target-token log-probs, argmax-token log-probs) per pair, one float per target token.

    Pairs are tokenized with `encode_pair` (training's tokenization). Rows are batched by length,
    left-padded so that every target ends at the right edge, and only the last (longest target +
    1) positions are projected onto the vocabulary.

    Raises DataError for a target that tokenizes to nothing (an empty response).
    """
    import torch

    pairs = encode_scoring_pairs(tokenizer, prompts, targets)
    empty = [i for i, (_, t) in enumerate(pairs) if not t]
    if empty:
        raise DataError(
            f"response {empty[0]} ({targets[empty[0]]!r}) tokenizes to nothing; every probe response must be non-empty"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    tok_lp: list[np.ndarray] = [np.zeros(0)] * len(pairs)
    max_lp: list[np.ndarray] = [np.zeros(0)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                seqs = [pairs[i][0] + pairs[i][1] for i in idx]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for b, s in enumerate(seqs):
                    ids[b, width - len(s) :] = torch.tensor(s)
                    mask[b, width - len(s) :] = 1
                ids, mask = ids.to(device), mask.to(device)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                max_t = max(len(pairs[i][1]) for i in idx)
                kw = _keep_kwargs(model, max_t + 1)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kw).logits
                logp = logits[:, -(max_t + 1) : -1, :].float().log_softmax(-1)  # position k predicts k + 1
                tgt = ids[:, -max_t:]
                lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).cpu().numpy()
                mx = logp.max(-1).values.cpu().numpy()
                for b, i in enumerate(idx):
                    t = len(pairs[i][1])
                    tok_lp[i], max_lp[i] = lp[b, max_t - t :].astype(np.float64), mx[b, max_t - t :].astype(np.float64)
    finally:
        model.train(was_training)
    return tok_lp, max_lp


def _keep_kwargs(model: Any, keep: int) -> dict[str, int]:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    name = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return {name: keep} if name else {}


@dataclass
class ProbeLogger:
    """Scores a probe set on the live model at each evaluation and keeps the rows of the probe table.

    Usage: ``logger.log(model, stage="dpo", stage_index=1, step=12, stage_step=4, epoch=0.5)``
    at every evaluation step (the training callbacks call it); `table()` returns the rows as a
    DataFrame with `PROBE_COLUMNS`.
    """

    probe_set: Any  # ProbeSet
    fmt: PromptFormat
    tokenizer: Any
    recipe: str = ""
    batch_size: int = 16
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # time spent scoring, for the overhead figure

    def __post_init__(self):
        self._prompts, self._targets, self._keys = self.probe_set.pairs(self.fmt, self.tokenizer)

    def log(self, model: Any, *, stage: str, stage_index: int, step: int, stage_step: int, epoch: float) -> None:
        import time

        t0 = time.perf_counter()
        tok, mx = score_targets(model, self.tokenizer, self._prompts, self._targets, batch_size=self.batch_size)
        for (fam, pid), lp, m in zip(self._keys, tok, mx):
            n = len(lp)
            self.rows.append(
                {
                    "recipe": self.recipe,
                    "stage": stage,
                    "stage_index": stage_index,
                    "step": step,
                    "stage_step": stage_step,
                    "epoch": float(epoch),
                    "family": fam,
                    "probe_id": pid,
                    "n_tokens": n,
                    "logprob_sum": float(lp.sum()),
                    "logprob_mean": float(lp.mean()),
                    "argmax_logprob_sum": float(m.sum()),
                    "argmax_logprob_mean": float(m.mean()),
                }
            )
        self.seconds += time.perf_counter() - t0

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(PROBE_COLUMNS))


# -- the table on disk ---------------------------------------------------------------------------


def write_probe_table(df: Any, path: Any) -> None:
    """Write a probe table as Parquet, atomically."""

    check_probe_table(df, str(path))
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_probe_table(path: Any):
    """Read and check a probe table (Parquet)."""
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read probe table {str(path)!r}: {e}") from None
    check_probe_table(df, str(path))
    return df


def check_probe_table(df: Any, where: str = "probe table") -> None:
    """Raise DataError unless `df` has every column and one row per (recipe, step, family, probe)."""
    missing = [c for c in PROBE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)} (see docs/LEDGER.md, 'Probe table')")
    dup = df.duplicated(["recipe", "step", "family", "probe_id"])
    if dup.any():
        r = df[dup].iloc[0]
        raise DataError(
            f"{where}: duplicate row for recipe {r['recipe']!r}, step {r['step']}, family "
            f"{r['family']!r}, probe {r['probe_id']!r}"
        )
    bad = ~np.isfinite(df["logprob_sum"].to_numpy(dtype=float)) | (df["logprob_sum"].to_numpy(dtype=float) > 0)
    if bad.any():
        raise DataError(f"{where}: row {int(np.flatnonzero(bad)[0])} has a log-probability that is not finite or > 0")


def family_curves(df: Any, metric: str = "logprob_sum"):
    """Mean of `metric` over probes per (recipe, stage, step, family), with the DPO start of each
    recipe subtracted from the step as ``since_dpo`` (negative: before preference training; a
    recipe without a DPO stage keeps its steps)."""
    if metric not in METRICS:
        raise DataError(f"unknown probe metric {metric!r}; use one of {', '.join(METRICS)}")
    g = df.groupby(["recipe", "stage", "stage_index", "step", "family"], sort=True)[metric].mean().reset_index()
    starts = {}
    for recipe, sub in df.groupby("recipe"):
        dpo = sub[sub["stage"] == "dpo"]
        # the last evaluation before the first DPO step is where DPO starts
        # a recipe without DPO is drawn against its own steps
        starts[recipe] = (int(dpo["step"].min()) - int(dpo["stage_step"].min())) if len(dpo) else 0
    g["since_dpo"] = g["step"] - g["recipe"].map(starts)
    return g
