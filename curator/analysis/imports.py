"""Bring learning dynamics measured by another trainer into a curator ledger.

Two input shapes (docs/ANALYSIS.md, "Importing runs"):

- **arrays** (``.npz`` or a dict): ``example_ids`` [N]; ``n_correct`` [N, M] with ``n_samples``
  [N, M] or a scalar ``k`` — or ``acc`` [N, M] (fraction correct) with ``k``; ``perplexity``
  [N, M] or ``target_nll`` [N, M] (mean per-token NLL of the target, every target token);
  optional ``target_tokens`` [N] or [N, M], ``steps`` [M], ``epochs`` [M]. Any other [N, M]
  array becomes an extra signal column.
- **long** (CSV, JSON, JSON lines or Parquet): one row per (example_id, checkpoint) with the
  same quantities as columns (``acc`` or ``n_correct``; ``perplexity`` or ``target_nll``;
  optional ``n_samples``, ``step``, ``epoch``, ``target_tokens``). Checkpoints are numbered
  1..M.

Both end in `curator.dynamics.ledger.Ledger.from_arrays`, which validates the table; the checks
here come first so that errors name the input's own keys and columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curator.dynamics.ledger import Ledger
from curator.errors import DataError

_KNOWN = {
    "example_ids",
    "n_correct",
    "acc",
    "n_samples",
    "k",
    "perplexity",
    "target_nll",
    "target_tokens",
    "steps",
    "epochs",
}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle, which we refuse for untrusted files
        raise DataError(
            f"{path}: cannot read without pickle ({e}); save example_ids as a string "
            "array, e.g. np.asarray(ids, dtype=str)"
        ) from e
    except Exception as e:  # a truncated or foreign file: zipfile, pickle and format errors alike
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e


def _one_of(arrays: Mapping[str, Any], a: str, b: str, where: str) -> str:
    has_a, has_b = a in arrays, b in arrays
    if has_a == has_b:
        which = "both" if has_a else "neither"
        raise DataError(f"{where}: give exactly one of '{a}' or '{b}' (got {which}); keys present: {sorted(arrays)}")
    return a if has_a else b


def _numbers(arrays: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    """``arrays[key]`` as floats; text where numbers belong is named, not a numpy traceback."""
    try:
        return np.asarray(arrays[key], dtype=float)
    except (TypeError, ValueError):
        flat = np.asarray(arrays[key], dtype=object).reshape(-1)
        bad = next((v for v in flat if not _is_float(v)), flat[0] if flat.size else None)
        raise DataError(f"{where}: {key} holds {bad!r}, not a number") from None


def _is_float(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _drop_examples(ids: np.ndarray, arrays: dict[str, np.ndarray], keep: np.ndarray, N: int) -> None:
    for key, arr in list(arrays.items()):
        if isinstance(arr, np.ndarray) and arr.ndim >= 1 and arr.shape[0] == N and key not in ("steps", "epochs"):
            arrays[key] = arr[keep]


def import_arrays(
    source: str | Path | Mapping[str, Any],
    *,
    k: int | None = None,
    p: float = 1.105,
    drop_nan: bool = False,
    **meta: Any,
):
    """Build a Ledger from per-example x per-checkpoint arrays (an ``.npz`` path or a dict).

    Args:
        source: ``.npz`` file or mapping with the keys in the module docstring.
        k: samples per cell when the input gives ``acc`` or no ``n_samples`` (overrides a ``k``
            array in the input).
        p: memorization threshold recorded in the ledger (PreMemAcc can still use any p later).
        drop_nan: drop examples whose perplexity is NaN at any checkpoint (recorded in
            ``ledger.meta["import_dropped"]``) instead of refusing the input.
        meta: extra run-level metadata stored with the ledger (e.g. ``model="llama-7b"``).

    Raises:
        DataError: missing or conflicting keys, shape mismatches, duplicate ids, acc * k not a
            whole number, NaN perplexities (unless ``drop_nan``).
    """
    where, arrays = _read_arrays(source)
    ids = _example_ids(arrays, where)
    acc_key = _one_of(arrays, "n_correct", "acc", where)
    ppl_key = _one_of(arrays, "perplexity", "target_nll", where)
    main = _numbers(arrays, acc_key, where)
    N, M = _check_shapes(arrays, acc_key, main, ids.size, where)
    k, n_samples = _sample_counts(arrays, k, (N, M), where)
    n_correct = _correct_counts(acc_key, main, n_samples, ids, where)
    ppl = _numbers(arrays, ppl_key, where)
    extra = {key: np.asarray(v) for key, v in arrays.items() if key not in _KNOWN or key == "target_tokens"}
    bad = ~np.isfinite(ppl)
    if bad.any():
        rows = _rows_to_drop(bad, ids, ppl_key, drop_nan, where)
        meta["import_dropped"] = ids[rows].tolist()
        work = {"ids": ids, "n_correct": n_correct, "n_samples": n_samples, "ppl": ppl, **extra}
        _drop_examples(ids, work, ~bad.any(axis=1), N)
        ids, n_correct, n_samples, ppl = work.pop("ids"), work.pop("n_correct"), work.pop("n_samples"), work.pop("ppl")
        extra, N = work, ids.size
    return Ledger.from_arrays(
        ids.tolist(),
        n_correct.astype(np.int64),
        n_samples.astype(np.int64),
        k=k,
        target_nll=ppl if ppl_key == "target_nll" else None,
        perplexity=ppl if ppl_key == "perplexity" else None,
        target_tokens=extra.get("target_tokens"),
        steps=arrays.get("steps"),
        epochs=arrays.get("epochs"),
        p=p,
        signals=_signals(extra, (N, M), where) or None,
        **meta,
    )


def _read_arrays(source: str | Path | Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """Where the arrays come from (for messages), and the arrays."""
    if not isinstance(source, (str, Path)):
        return "arrays", {key: np.asarray(v) for key, v in source.items()}
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return str(source), _load_npz(path)


def _example_ids(arrays: dict[str, np.ndarray], where: str) -> np.ndarray:
    """The rows' example ids: present, 1-D, not empty, all different."""
    if "example_ids" not in arrays:
        raise DataError(f"{where}: missing 'example_ids' (one id per row); keys present: {sorted(arrays)}")
    ids = np.asarray(arrays["example_ids"]).astype(str)
    if ids.ndim != 1:
        raise DataError(f"{where}: example_ids must be 1-D, got shape {list(ids.shape)}")
    if ids.size == 0:
        raise DataError(f"{where}: example_ids is empty")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise DataError(
            f"{where}: {dup.size} duplicate example id(s), e.g. {dup[:3].tolist()}; "
            "every row must be a different example"
        )
    return ids


def _check_shapes(arrays: dict[str, np.ndarray], acc_key: str, main: np.ndarray, N: int, where: str) -> tuple[int, int]:
    """(examples, checkpoints), once every per-cell and per-checkpoint array has its shape."""
    if main.ndim != 2 or main.shape[0] != N:
        raise DataError(
            f"{where}: {acc_key} has shape {list(main.shape)}, expected [{N}, checkpoints] "
            f"(one row per example id, one column per checkpoint)"
        )
    M = main.shape[1]
    if M == 0:
        raise DataError(f"{where}: {acc_key} has zero checkpoints (columns)")
    for key in ("n_samples", "perplexity", "target_nll", "target_tokens"):
        if key in arrays:
            shape = arrays[key].shape
            ok = shape == (N, M) or (key == "target_tokens" and shape == (N,))
            if not ok:
                raise DataError(
                    f"{where}: {key} has shape {list(shape)} but {acc_key} has "
                    f"{[N, M]}; every per-cell array must be [examples, checkpoints]"
                )
    for key in ("steps", "epochs"):
        if key in arrays and arrays[key].shape != (M,):
            raise DataError(f"{where}: {key} has shape {list(arrays[key].shape)}, expected [{M}] (one per checkpoint)")
    return N, M


def _sample_counts(
    arrays: dict[str, np.ndarray], k: Any, shape: tuple[int, int], where: str
) -> tuple[int | None, np.ndarray]:
    """k (the argument, else the input's ``k``) and the samples per cell (the input's, else k)."""
    if k is None and "k" in arrays:
        k = np.asarray(arrays["k"]).reshape(-1)[0]
    if k is not None and (isinstance(k, (bool, np.bool_)) or not np.isfinite(float(k)) or float(k) != int(k)):
        raise DataError(f"{where}: k (samples per cell) must be a whole number, got {k!r}")
    k = int(k) if k is not None else None
    if "n_samples" in arrays:
        n_samples = _numbers(arrays, "n_samples", where)
        if (~np.isfinite(n_samples)).any() or (n_samples != np.round(n_samples)).any():
            raise DataError(f"{where}: n_samples must hold whole numbers (no NaN)")
        return k, n_samples
    if k is None:
        raise DataError(f"{where}: give 'n_samples' [N, M] or the samples per cell k (k=... or a 'k' key)")
    if k < 1:
        raise DataError(f"{where}: k must be >= 1, got {k}")
    return k, np.full(shape, float(k))


def _correct_counts(acc_key: str, main: np.ndarray, n_samples: np.ndarray, ids: np.ndarray, where: str) -> np.ndarray:
    """Correct samples per cell: ``n_correct`` as given, or ``acc * n_samples`` (whole numbers)."""
    if acc_key != "acc":
        if np.isnan(main).any() or (np.abs(main - np.round(main)) > 1e-9).any():
            raise DataError(f"{where}: n_correct must hold whole numbers (no NaN)")
        return main
    if np.isnan(main).any():
        raise DataError(f"{where}: acc has {int(np.isnan(main).sum())} NaN entries")
    if (main < 0).any() or (main > 1).any():
        raise DataError(f"{where}: acc must lie in [0, 1] (a fraction of samples correct)")
    n_correct = main * n_samples
    frac = np.abs(n_correct - np.round(n_correct))
    if (frac > 1e-6).any():
        i, j = np.argwhere(frac > 1e-6)[0]
        raise DataError(
            f"{where}: acc * n_samples is not a whole number at example {str(ids[i])!r}, "
            f"checkpoint {j + 1} (acc={main[i, j]}, samples={n_samples[i, j]:g}); "
            "is k right?"
        )
    return np.round(n_correct)


def _rows_to_drop(bad: np.ndarray, ids: np.ndarray, ppl_key: str, drop_nan: bool, where: str) -> np.ndarray:
    """The examples with a NaN/inf perplexity somewhere: refused, unless ``drop_nan`` leaves some."""
    rows = np.flatnonzero(bad.any(axis=1))
    if not drop_nan:
        first = [f"({ids[i]}, checkpoint {int(np.flatnonzero(bad[i])[0]) + 1})" for i in rows[:3]]
        raise DataError(
            f"{where}: {ppl_key} has {int(bad.sum())} NaN/inf entries in {rows.size} "
            f"example(s), e.g. {', '.join(first)}; re-measure them, or import with "
            "drop_nan=True (--drop-nan) to leave those examples out"
        )
    if rows.size == ids.size:
        raise DataError(f"{where}: every example has a NaN {ppl_key}; nothing to import")
    return rows


def _signals(extra: dict[str, np.ndarray], shape: tuple[int, int], where: str) -> dict[str, np.ndarray]:
    """The input's other arrays, each an [examples, checkpoints] signal column."""
    signals = {}
    for key, arr in extra.items():
        if key == "target_tokens":
            continue
        if arr.shape != shape:
            raise DataError(
                f"{where}: unknown key {key!r} with shape {list(arr.shape)}; extra arrays must "
                f"be [examples, checkpoints] signals (known keys: {sorted(_KNOWN)})"
            )
        signals[key] = arr
    return signals


def _read_long(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, Mapping):
                data = data.get("rows", data)
            return pd.DataFrame(data)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # pandas/pyarrow raise many types for a corrupt or foreign file
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{path}: cannot read as {suffix} ({type(e).__name__}: {reason})") from e
    raise DataError(f"{path}: unknown format {suffix!r}; use .csv, .json, .jsonl or .parquet")


def import_long(
    source: str | Path | pd.DataFrame, *, k: int | None = None, p: float = 1.105, drop_nan: bool = False, **meta: Any
):
    """Build a Ledger from a long table: one row per (example_id, checkpoint).

    Columns: ``example_id``, ``checkpoint`` (1..M), ``acc`` or ``n_correct``, ``perplexity`` or
    ``target_nll``; optional ``n_samples`` (else ``k``), ``step``, ``epoch``, ``target_tokens``;
    other numeric columns become signals.

    Raises:
        DataError: missing columns, duplicate (example_id, checkpoint) rows, an example missing a
            checkpoint, checkpoints not numbered 1..M, steps/epochs that differ within a
            checkpoint, and everything `import_arrays` checks.
    """
    where = str(source) if not isinstance(source, pd.DataFrame) else "table"
    df = _read_long(Path(source)) if not isinstance(source, pd.DataFrame) else source.copy()
    for col in ("example_id", "checkpoint"):
        if col not in df.columns:
            raise DataError(f"{where}: missing column {col!r}; columns present: {list(df.columns)}")
    _one_of(df.columns, "n_correct", "acc", where)
    _one_of(df.columns, "perplexity", "target_nll", where)
    df["example_id"] = df["example_id"].astype(str)
    if df["checkpoint"].isna().any():
        raise DataError(f"{where}: {int(df['checkpoint'].isna().sum())} row(s) have no checkpoint")
    ck = pd.to_numeric(df["checkpoint"], errors="coerce")
    if ck.isna().any() or (ck != ck.round()).any():
        bad = df["checkpoint"][ck.isna() | (ck != ck.round())].iloc[0]
        raise DataError(f"{where}: checkpoint {bad!r} is not a whole number; number checkpoints 1..M")
    df["checkpoint"] = ck.astype(int)
    dup = df.duplicated(["example_id", "checkpoint"])
    if dup.any():
        first = df.loc[dup, ["example_id", "checkpoint"]].iloc[0].tolist()
        raise DataError(f"{where}: {int(dup.sum())} duplicate (example_id, checkpoint) row(s), e.g. {first}")
    cks = sorted(int(c) for c in df["checkpoint"].unique())
    if cks != list(range(1, len(cks) + 1)):
        raise DataError(
            f"{where}: checkpoints must be numbered 1..M in training order, found {cks[:10]}; "
            "put training steps in a 'step' column"
        )
    ids = list(dict.fromkeys(df["example_id"]))
    counts = df.groupby("example_id")["checkpoint"].nunique()
    short = counts[counts < len(cks)]
    if len(short):
        raise DataError(
            f"{where}: {len(short)} example(s) lack rows at some of the {len(cks)} checkpoints, "
            f"e.g. {short.index[:3].tolist()}; every example needs every checkpoint"
        )

    def wide(col: str) -> np.ndarray:
        return df.pivot(index="example_id", columns="checkpoint", values=col).reindex(index=ids, columns=cks).to_numpy()

    arrays: dict[str, Any] = {"example_ids": np.asarray(ids)}
    for col in df.columns:
        if col in ("example_id", "checkpoint", "step", "epoch"):
            continue
        if not pd.api.types.is_numeric_dtype(df[col]):
            raise DataError(f"{where}: column {col!r} is not numeric")
        arrays[col] = wide(col).astype(float)
    for col, key in (("step", "steps"), ("epoch", "epochs")):
        if col in df.columns:
            per = df.groupby("checkpoint")[col].nunique()
            if (per > 1).any():
                raise DataError(f"{where}: checkpoint(s) {per[per > 1].index.tolist()} have more than one {col}")
            arrays[key] = df.groupby("checkpoint")[col].first().reindex(cks).to_numpy()
    return import_arrays(arrays, k=k, p=p, drop_nan=drop_nan, **meta)


def import_ledger(source: str | Path, *, k: int | None = None, p: float = 1.105, drop_nan: bool = False, **meta: Any):
    """Import by file type: ``.npz`` -> `import_arrays`; ``.csv/.json/.jsonl/.parquet`` -> `import_long`."""
    path = Path(source)
    if path.suffix.lower() == ".npz":
        return import_arrays(path, k=k, p=p, drop_nan=drop_nan, **meta)
    return import_long(path, k=k, p=p, drop_nan=drop_nan, **meta)
