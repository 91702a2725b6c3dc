"""The learning-dynamics ledger: one row per (example, checkpoint), stored as Parquet.

The schema is documented in docs/LEDGER.md so that runs made elsewhere can be imported. Ledger-level
settings (threshold p, samples per cell k, lazy flag, model, format ...) travel in the Parquet
file's schema metadata under the key ``curator.ledger`` (a JSON object).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.errors import DataError
from curator.io import atomic_path
from curator.readback import check_ledger_meta

SCHEMA_VERSION = 1
METADATA_KEY = b"curator.ledger"

# column -> pandas dtype; the required core of every ledger (optional signal columns may follow)
LEDGER_COLUMNS: dict[str, str] = {
    "example_id": "string",
    "checkpoint": "int64",
    "step": "int64",
    "epoch": "float64",
    "n_samples": "int64",
    "n_correct": "int64",
    "target_nll": "float64",
    "target_tokens": "Int64",  # nullable: imported runs may not know their token counts
    "perplexity": "float64",
    "memorized": "bool",
    "skip_reason": "string",  # null for a complete cell
}

# why a cell has fewer than k samples (see docs/LEDGER.md, "Lazy tracking")
SKIP_REASONS = ("memorized", "max-reached", "cannot-raise", "determined", "deferred")


def _rows_named(df: pd.DataFrame, mask: Any, limit: int = 5) -> str:
    bad = df.loc[mask, ["example_id", "checkpoint"]]
    shown = ", ".join(f"({r.example_id}, {r.checkpoint})" for r in bad.head(limit).itertuples())
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return shown + more


@dataclass
class Ledger:
    """A validated ledger table plus its run-level metadata.

    Attributes:
        df: one row per (example_id, checkpoint), sorted by checkpoint then example order.
        meta: run-level settings; ``p`` (threshold the ``memorized`` column used), ``k`` (samples
            a complete cell aims for), ``lazy``, ``model``, ``format`` and anything else JSON-able.
    """

    df: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.df = _validate(self.df, self.meta)
        self.meta = {"schema_version": SCHEMA_VERSION, **self.meta}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], **meta: Any) -> Ledger:
        """From dicts with the ledger columns (``perplexity``/``memorized`` filled in if absent)."""
        rows = list(rows)
        if not rows:
            raise DataError("cannot build a ledger from zero rows")
        df = pd.DataFrame(rows)
        if "target_nll" in df and "perplexity" not in df:
            df["perplexity"] = np.exp(df["target_nll"].astype(float))
        if "memorized" not in df and "perplexity" in df and meta.get("p") is not None:
            df["memorized"] = df["perplexity"].astype(float) <= float(meta["p"])
        if "skip_reason" not in df:
            df["skip_reason"] = None
        return cls(df, dict(meta))

    @classmethod
    def from_arrays(
        cls,
        example_ids: Sequence[str],
        n_correct: Any,
        n_samples: Any = None,
        *,
        k: int | None = None,
        target_nll: Any = None,
        perplexity: Any = None,
        target_tokens: Any = None,
        steps: Sequence[int] | np.ndarray | None = None,
        epochs: Sequence[float] | np.ndarray | None = None,
        p: float = 1.105,
        signals: Mapping[str, Any] | None = None,
        **meta: Any,
    ) -> Ledger:
        """Build a ledger from per-example x per-checkpoint arrays (runs made by other trainers).

        Args:
            example_ids: N ids, one per row of every array.
            n_correct: [N, M] correct samples per example and checkpoint.
            n_samples: [N, M] samples drawn per cell; or omit and give ``k`` (every cell k samples).
            target_nll / perplexity: [N, M] mean per-token NLL of the target, or its exp (one of).
            target_tokens: optional [N] or [N, M] target token counts.
            steps / epochs: optional M optimizer steps / epochs of the checkpoints
                (default: step = epoch = checkpoint index).
            p: the memorization threshold recorded in the metadata and used for ``memorized``.
            signals: optional extra [N, M] columns (e.g. ``{"loss": arr}``).
        """
        ids = [str(i) for i in example_ids]
        N = len(ids)
        if N == 0:
            raise DataError("from_arrays: example_ids is empty")
        nc = _as_2d("n_correct", n_correct, N)
        M = nc.shape[1]
        if M == 0:
            raise DataError("from_arrays: n_correct has zero checkpoints (columns)")
        if n_samples is None:
            if k is None:
                raise DataError("from_arrays: give n_samples ([N, M] array) or k (samples per cell)")
            ns = np.full((N, M), int(k))
        else:
            ns = _as_2d("n_samples", n_samples, N, M)
            if k is None:
                k = int(ns.max())
        if (target_nll is None) == (perplexity is None):
            raise DataError("from_arrays: give exactly one of target_nll or perplexity ([N, M] arrays)")
        nll: np.ndarray
        if target_nll is not None:
            nll = _as_2d("target_nll", target_nll, N, M).astype(float)
        else:
            ppl: np.ndarray = _as_2d("perplexity", perplexity, N, M).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                nll = np.log(ppl)
        if target_tokens is None:
            tt = np.full((N, M), np.nan)
        else:
            tt = np.asarray(target_tokens, dtype=float)
            tt = np.repeat(tt[:, None], M, axis=1) if tt.ndim == 1 else _as_2d("target_tokens", tt, N, M)
        steps_a = np.arange(1, M + 1) if steps is None else np.asarray(steps)
        epochs_a = np.arange(1, M + 1, dtype=float) if epochs is None else np.asarray(epochs, dtype=float)
        for name, arr in (("steps", steps_a), ("epochs", epochs_a)):
            if arr.shape != (M,):
                raise DataError(
                    f"from_arrays: {name} has {arr.size} entries but the arrays have "
                    f"{M} checkpoints (columns); give one per checkpoint"
                )
        df = pd.DataFrame(
            {
                "example_id": np.repeat(ids, M),
                "checkpoint": np.tile(np.arange(1, M + 1), N),
                "step": np.tile(steps_a, N),
                "epoch": np.tile(epochs_a, N),
                "n_samples": ns.reshape(-1),
                "n_correct": nc.reshape(-1),
                "target_nll": nll.reshape(-1),
                "target_tokens": pd.array(np.where(np.isnan(tt), None, tt).reshape(-1), dtype="Int64")
                if target_tokens is not None
                else pd.array([None] * (N * M), dtype="Int64"),
            }
        )
        df["perplexity"] = np.exp(df["target_nll"])
        df["memorized"] = df["perplexity"] <= p
        df["skip_reason"] = None
        for name, arr in (signals or {}).items():
            df[name] = _as_2d(name, arr, N, M).reshape(-1)
        meta = {"p": float(p), "k": int(k), "lazy": False, "source": "import", **meta}
        return cls(df, meta)

    # -- accessors ----------------------------------------------------------------------------
    @property
    def p(self) -> float | None:
        return self.meta.get("p")

    @property
    def k(self) -> int:
        return int(self.meta.get("k") or self.df["n_samples"].max())

    @property
    def checkpoints(self) -> list[int]:
        return sorted(self.df["checkpoint"].unique().tolist())

    @property
    def example_ids(self) -> list[str]:
        return list(dict.fromkeys(self.df["example_id"].tolist()))

    @property
    def is_complete(self) -> bool:
        """True when every cell was fully sampled (no lazy skips)."""
        return bool(self.df["skip_reason"].isna().all())

    def pivot(self, column: str) -> pd.DataFrame:
        """``column`` as an [example_id x checkpoint] table (examples in ledger order)."""
        t = self.df.pivot(index="example_id", columns="checkpoint", values=column)
        return t.reindex(index=self.example_ids, columns=self.checkpoints)

    def checkpoint_info(self) -> pd.DataFrame:
        """step and epoch per checkpoint."""
        return self.df.groupby("checkpoint")[["step", "epoch"]].first().sort_index()

    def __len__(self) -> int:
        return len(self.df)

    # -- I/O ------------------------------------------------------------------------------------
    def to_parquet(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file, then rename) so a crash never leaves half a ledger."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        table = pa.Table.from_pandas(self.df, preserve_index=False)
        md = dict(table.schema.metadata or {})
        md[METADATA_KEY] = json.dumps(self.meta, default=str).encode()
        table = table.replace_schema_metadata(md)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def read_ledger(path: str | os.PathLike) -> Ledger:
    """Read and validate a ledger Parquet file (metadata from the ``curator.ledger`` key)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise DataError(f"ledger file {path} does not exist")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for non-Parquet input
        raise DataError(f"{path} is not a readable Parquet file ({e})") from e
    md = table.schema.metadata or {}
    meta: dict[str, Any] = {}
    if METADATA_KEY in md:
        try:
            meta = json.loads(md[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: metadata key 'curator.ledger' is not valid JSON ({e})") from e
        meta = check_ledger_meta(meta, path)  # types and ranges of the settings later commands reuse
    try:
        return Ledger(table.to_pandas(), meta)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _as_2d(name: str, arr: Any, N: int, M: int | None = None) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2 or a.shape[0] != N or (M is not None and a.shape[1] != M):
        want = f"[{N}, {M}]" if M is not None else f"[{N}, checkpoints]"
        raise DataError(f"from_arrays: {name} has shape {list(a.shape)}, expected {want} (examples x checkpoints)")
    return a


def _validate(df: pd.DataFrame, meta: Mapping[str, Any]) -> pd.DataFrame:
    """Check the schema and invariants; return a copy with canonical dtypes and order."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(f"a ledger needs a pandas DataFrame, got {type(df).__name__}")
    df = df.copy()
    if "target_nll" in df and "perplexity" not in df:
        df["perplexity"] = np.exp(df["target_nll"].astype(float))
    if "target_tokens" not in df:
        df["target_tokens"] = pd.array([None] * len(df), dtype="Int64")
    if "skip_reason" not in df:
        df["skip_reason"] = None
    missing = [c for c in LEDGER_COLUMNS if c not in df]
    if missing:
        raise DataError(f"ledger is missing column(s) {', '.join(missing)}; see docs/LEDGER.md for the schema")
    if len(df) == 0:
        raise DataError("ledger has no rows")
    for col in ("n_samples", "n_correct", "checkpoint", "step"):
        if df[col].isna().any():
            raise DataError(
                f"ledger column {col} has missing values at (example_id, checkpoint) {_rows_named(df, df[col].isna())}"
            )
        # counts are integers: a fraction would be silently truncated by the cast below
        vals = pd.to_numeric(df[col], errors="coerce")
        frac = vals.notna() & (vals != np.round(vals))
        if frac.any():
            raise DataError(
                f"ledger column {col} must hold whole numbers; found {vals[frac].iloc[0]:g} at "
                f"(example_id, checkpoint) {_rows_named(df, frac)}"
            )
    try:
        df = df.astype({c: t for c, t in LEDGER_COLUMNS.items() if c not in ("skip_reason", "target_tokens")})
        df["target_tokens"] = pd.array(df["target_tokens"], dtype="Int64")
    except (ValueError, TypeError) as e:
        raise DataError(f"ledger column has the wrong type ({e}); see docs/LEDGER.md") from e
    df["skip_reason"] = df["skip_reason"].astype("string")

    dup = df.duplicated(["example_id", "checkpoint"], keep=False)
    if dup.any():
        raise DataError(f"ledger has duplicate (example_id, checkpoint) rows: {_rows_named(df, dup)}")
    if (df["checkpoint"] < 1).any():
        raise DataError(f"checkpoint indices are 1-based; found {int(df['checkpoint'].min())}")
    bad_ppl = df["perplexity"].isna() | ~np.isfinite(df["perplexity"]) | (df["perplexity"] < 1.0 - 1e-9)
    if meta.get("kind") == "rollout":  # an RL rollout ledger has no teacher-forced target: NaN there
        bad_ppl &= ~(df["perplexity"].isna() & df["target_nll"].isna())
    if bad_ppl.any():
        raise DataError(
            f"ledger has NaN, infinite or < 1 perplexities at (example_id, checkpoint) "
            f"{_rows_named(df, bad_ppl)}; re-measure or drop those examples"
        )
    # perplexity and target_nll must describe the same number
    if not np.allclose(np.exp(df["target_nll"]), df["perplexity"], rtol=1e-6, atol=0, equal_nan=True):
        off = ~np.isclose(np.exp(df["target_nll"]), df["perplexity"], rtol=1e-6, atol=0, equal_nan=True)
        raise DataError(f"perplexity != exp(target_nll) at {_rows_named(df, off)}")
    neg = (df["n_samples"] < 0) | (df["n_correct"] < 0) | (df["n_correct"] > df["n_samples"])
    if neg.any():
        raise DataError(f"need 0 <= n_correct <= n_samples; violated at {_rows_named(df, neg)}")
    complete = df["skip_reason"].isna()
    empty = complete & (df["n_samples"] == 0)
    if empty.any():
        raise DataError(f"cells with n_samples=0 must give a skip_reason; missing at {_rows_named(df, empty)}")
    k = meta.get("k")
    if k is not None:
        over = ~complete & (df["n_samples"] >= int(k))
        if over.any():
            raise DataError(
                f"cells with a skip_reason must have fewer than k={k} samples; violated at {_rows_named(df, over)}"
            )
    elif (~complete).any():
        raise DataError(
            "ledger has skipped cells (skip_reason set) but no 'k' in its metadata; lazy ledgers must record k"
        )
    # every example at every checkpoint, and one (step, epoch) per checkpoint
    ids = df["example_id"].unique()
    cps = np.sort(df["checkpoint"].unique())
    if len(df) != len(ids) * len(cps):
        counts = df.groupby("example_id")["checkpoint"].nunique()
        short = counts[counts < len(cps)]
        names = ", ".join(map(str, short.index[:5])) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        raise DataError(
            f"mismatched checkpoints: every example needs a row at each of the "
            f"{len(cps)} checkpoints {cps.tolist()}; example(s) {names} lack some"
        )
    per_cp = df.groupby("checkpoint")[["step", "epoch"]].nunique()
    bad_cp = per_cp[(per_cp["step"] > 1) | (per_cp["epoch"] > 1)]
    if len(bad_cp):
        raise DataError(f"checkpoint(s) {bad_cp.index.tolist()} have rows with different step/epoch values")
    order = {e: i for i, e in enumerate(dict.fromkeys(df["example_id"]))}
    df = df.assign(_o=df["example_id"].map(order)).sort_values(["checkpoint", "_o"]).drop(columns="_o")
    # core columns first in schema order, optional signals after
    df = df[list(LEDGER_COLUMNS) + [c for c in df.columns if c not in LEDGER_COLUMNS]]
    return df.reset_index(drop=True)
