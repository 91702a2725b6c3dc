"""Files curator reads back are inputs: the one place their contents are checked.

A run directory, a ledger's metadata, a sweep's checkpoint table or a round's ``metrics.json``
was written by curator, but a user can edit it, a copy can be cut short, and a crash or a full disk
can leave it empty. So every value read back from such a file is checked here like a recipe field
(type, range, presence) before anything uses it, and a bad one is a `DataError` that names the
file, the field and what to do — never a traceback deep in pandas, and never a silently wrong
result (an accuracy of 7 fitted as an accuracy, a 0-byte ledger trusted as a finished round).

Each ``check_*`` takes the parsed value and the path it came from and returns the value (numbers
as Python floats/ints) or raises. Layer: foundation (errors, io); the readers in rounds,
dynamics, analysis and tracking call it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from curator.errors import DataError
from curator.io import read_json

# what to tell the user about a damaged file inside a finished round: redoing the round is safe
# (training is seeded), trusting the file is not
REDO_ROUND = "restore it, or delete its round folder ({folder}) so that `curate run` redoes that round"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number(
    v: Any,
    where: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    nan_ok: bool = False,
) -> float | int:
    """``v`` as a number in [lo, hi] (an int with ``integer``), or a DataError saying ``where``."""
    want = "a whole number" if integer else "a number"
    if lo is not None and hi is not None:
        want += f" in [{lo:g}, {hi:g}]"
    elif lo is not None:
        want += f" >= {lo:g}"
    if nan_ok:
        want += " (or NaN/null: not measured)"
    if v is None and nan_ok:
        return float("nan")
    if not _is_number(v):
        raise DataError(f"{where} is {v!r}; expected {want}")
    if isinstance(v, float) and math.isnan(v):
        if nan_ok:
            return v
        raise DataError(f"{where} is NaN; expected {want}")
    if integer and not (isinstance(v, int) or (math.isfinite(v) and v == int(v))):
        raise DataError(f"{where} is {v!r}; expected {want}")
    if (lo is not None and v < lo) or (hi is not None and v > hi) or (isinstance(v, float) and math.isinf(v)):
        raise DataError(f"{where} is {v!r}; expected {want}")
    return int(v) if integer else float(v)


def mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise DataError(f"{where} must be a JSON object, got {type(v).__name__}")
    return v


def text(v: Any, where: str, none_ok: bool = True) -> str | None:
    if v is None and none_ok:
        return None
    if not isinstance(v, str):
        raise DataError(f"{where} is {v!r}; expected text")
    return v


# ----------------------------------------------------------------------------- round files

# metrics.json of a finished round: key -> (required, check). Fractions are in [0, 1]; NaN means
# "not measured" (no test set, a lazy ledger's unknown train accuracy).
_FRACTION = {"lo": 0.0, "hi": 1.0, "nan_ok": True}
_METRICS: dict[str, tuple[bool, dict[str, Any]]] = {
    # every reader uses n_train (the x of every curve); the rest is checked when it is there
    "n_train": (True, {"lo": 0, "integer": True}),
    "round": (False, {"lo": 0, "integer": True}),
    "test_accuracy": (False, _FRACTION),
    "premem_acc": (False, _FRACTION),
    "train_accuracy": (False, _FRACTION),
    "train_accuracy_lo": (False, _FRACTION),
    "train_accuracy_hi": (False, _FRACTION),
    "fraction_memorized": (False, _FRACTION),
    "train_loss": (False, {"nan_ok": True}),
    "train_seconds": (False, {"lo": 0, "nan_ok": True}),
    "select_seconds": (False, {"lo": 0, "nan_ok": True}),
    "round_seconds": (False, {"lo": 0, "nan_ok": True}),
}


def check_metrics(m: Any, path: str | os.PathLike) -> dict[str, Any]:
    """A finished round's metrics.json: the keys every reader uses are there and in range."""
    folder = Path(path).parent
    fix = REDO_ROUND.format(folder=folder)
    if not isinstance(m, Mapping):
        raise DataError(f"{path} must hold a JSON object of round metrics, got {type(m).__name__}; {fix}")
    out = dict(m)
    for key, (required, rule) in _METRICS.items():
        if key not in m:
            if required:
                raise DataError(f"{path} has no {key!r} (a finished round records it); {fix}")
            continue
        try:
            out[key] = number(m[key], f"{path}: {key}", **rule)
        except DataError as e:
            raise DataError(f"{e}; {fix}") from None
    for key in ("stopped_reason", "selection_note"):
        if m.get(key) is not None and not isinstance(m[key], str):
            raise DataError(f"{path}: {key} is {m[key]!r}; expected text; {fix}")
    return out


def check_id_list(v: Any, path: str | os.PathLike, fix: str | None = None) -> list[str]:
    """A list of example ids (next_train_ids.json, seed_ids.json): text, each once."""
    fix = fix or REDO_ROUND.format(folder=Path(path).parent)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise DataError(f"{path} must hold a JSON list of example ids (text); {fix}")
    if len(set(v)) != len(v):
        raise DataError(f"{path} names {len(v) - len(set(v))} example id(s) twice; {fix}")
    return v


_CHECKPOINT_NUMBERS: dict[str, dict[str, Any]] = {
    "checkpoint": {"lo": 1, "integer": True},
    "step": {"lo": 0, "integer": True},
    "epoch": {"lo": 0},
    "train_loss": {"nan_ok": True},
    "test_accuracy": _FRACTION,
}


def check_checkpoint_records(v: Any, path: str | os.PathLike) -> list[dict[str, Any]]:
    """A round's checkpoints.json: one record per checkpoint; the numbers readers use are numbers
    (other keys, such as what an ``after_checkpoint`` hook added, are the hook's business)."""
    fix = REDO_ROUND.format(folder=Path(path).parent)
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise DataError(f"{path} must hold a JSON list of per-checkpoint records; {fix}")
    for i, rec in enumerate(v):
        try:
            for key, rule in _CHECKPOINT_NUMBERS.items():
                if key in rec:
                    number(rec[key], f"{path}: record {i} {key}", **rule)
        except DataError as e:
            raise DataError(f"{e}; {fix}") from None
    return [dict(x) for x in v]


def check_parquet_file(path: str | os.PathLike, fix: str) -> None:
    """A Parquet file is there, not empty, and its footer reads (cheap: the data is not read)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} is missing; {fix}")
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty (0 bytes: a write cut short, or a full disk); {fix}")
    import pyarrow.parquet as pq  # heavy third-party import: only when a ledger is checked

    try:
        meta = pq.read_metadata(p)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{p} is not a readable Parquet file ({' '.join(str(e).split())[:120]}); {fix}") from None
    if meta.num_rows == 0:
        raise DataError(f"{p} holds no rows; {fix}")


def check_finished_round(round_dir: str | os.PathLike, required: tuple[str, ...]) -> None:
    """Every file a finished round must have is present and readable (cheap checks only)."""
    rd = Path(round_dir)
    fix = REDO_ROUND.format(folder=rd)
    for name in required:
        p = rd / name
        if name.endswith(".parquet"):
            check_parquet_file(p, fix)
        elif not p.is_file():
            raise DataError(f"{p} is missing from a finished round; {fix}")


def read_checked(path: str | os.PathLike, check: Callable[[Any, str | os.PathLike], Any]) -> Any:
    """``check(read_json(path), path)``: a JSON file read back and validated in one step."""
    return check(read_json(path), path)


# ----------------------------------------------------------------------------- ledger metadata

# settings a ledger's metadata carries that later commands use (robustness, measure, export)
_SAMPLING_NUMBERS: dict[str, dict[str, Any]] = {
    "temperature": {"lo": 0.0},
    "top_p": {"lo": 0.0, "hi": 1.0},
    "top_k": {"lo": 0, "integer": True},
    "max_new_tokens": {"lo": 1, "integer": True},
    "seed": {"lo": 0, "integer": True},
}
_FORMAT_TEXT = ("prompt", "target")


def check_ledger_meta(meta: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The ``curator.ledger`` metadata of a ledger file (docs/LEDGER.md): the settings later
    commands reuse have the types and ranges those commands need."""
    fix = "see docs/LEDGER.md; fix or drop that key"
    if not isinstance(meta, Mapping):
        raise DataError(f"{path}: metadata 'curator.ledger' must be a JSON object, got {type(meta).__name__}")
    where = f"{path}: metadata"
    try:
        if meta.get("p") is not None and not (_is_number(meta["p"]) and meta["p"] > 1):
            raise DataError(f"{where} p={meta['p']!r} is not valid (a number > 1)")
        if meta.get("k") is not None and not (isinstance(meta["k"], int) and not isinstance(meta["k"], bool)):
            raise DataError(f"{where} k={meta['k']!r} is not valid (an integer >= 1)")
        if meta.get("k") is not None and meta["k"] < 1:
            raise DataError(f"{where} k={meta['k']!r} is not valid (an integer >= 1)")
        for key in ("lazy", "defer"):
            if meta.get(key) is not None and not isinstance(meta[key], bool):
                raise DataError(f"{where} {key}={meta[key]!r} is not valid (true or false)")
        for key in ("grader", "model"):
            text(meta.get(key), f"{where} {key}")
        fmt = meta.get("format")
        if fmt is not None:
            mapping(fmt, f"{where} format")
            for key in _FORMAT_TEXT:
                text(fmt.get(key), f"{where} format.{key}")
            if fmt.get("chat") is not None and not isinstance(fmt["chat"], bool):
                raise DataError(f"{where} format.chat={fmt['chat']!r} is not valid (true or false)")
            _text_list(fmt.get("stop"), f"{where} format.stop")
        samp = meta.get("sampling")
        if samp is not None:
            mapping(samp, f"{where} sampling")
            for key, rule in _SAMPLING_NUMBERS.items():
                if samp.get(key) is not None:
                    number(samp[key], f"{where} sampling.{key}", **rule)
            _text_list(samp.get("stop"), f"{where} sampling.stop")
    except DataError as e:
        raise DataError(f"{e}; {fix}") from None
    return dict(meta)


def _text_list(v: Any, where: str) -> None:
    if v is not None and not (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)):
        raise DataError(f"{where} is {v!r}; expected a list of strings")


# ----------------------------------------------------------------------------- tables


def check_accuracy_column(values: Any, where: str) -> None:
    """A column of test accuracies (fractions in [0, 1]; NaN: not measured) — a string, a
    percentage or a count there would be fitted as an accuracy."""
    import numpy as np
    import pandas as pd

    col = pd.Series(values)
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        raise DataError(f"{where} holds {col[bad].iloc[0]!r}, not a number; test accuracies are fractions in [0, 1]")
    arr = num.to_numpy(dtype=float)
    out = np.isfinite(arr) & ((arr < 0) | (arr > 1))
    if out.any():
        raise DataError(
            f"{where} holds {arr[out][0]:g}; test accuracies are fractions in [0, 1] (a percentage? divide by 100)"
        )


def check_numeric_columns(df: Any, columns: Any, where: str) -> None:
    """Columns that must be numbers (NaN allowed): the first offending value is named."""
    import pandas as pd

    for c in columns:
        if c not in df:
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna() & df[c].notna()
        if bad.any():
            raise DataError(f"{where}: column {c!r} holds {df[c][bad].iloc[0]!r}, not a number")


# ----------------------------------------------------------------------------- weights


def load_weights(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """Saved trainable weights (a ``{name: tensor}`` dict written by torch.save), read with
    ``weights_only=True``: a crafted pickle in a run directory never runs code."""
    import torch  # heavy third-party import: only when weights are read

    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, or not plain tensors
        raise DataError(
            f"{p} cannot be read as saved weights ({type(e).__name__}: {' '.join(str(e).split())[:160]}); {fix}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise DataError(f"{p} cannot be read as saved weights (not a mapping of names to tensors); {fix}")
    return state


# ----------------------------------------------------------------------------- resolved recipe


def read_recipe_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """A run's resolved recipe (curator-run.yaml) as a raw mapping: valid UTF-8 YAML holding a mapping."""
    import yaml

    p = Path(path)
    fix = "restore it from the recipe the run was started with"
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        first = " ".join(str(e).split())[:120]
        raise DataError(f"{p} is damaged (not a readable YAML recipe: {first}); {fix}") from None
    if raw is None:
        raise DataError(f"{p} is empty; {fix}")
    if not isinstance(raw, dict):
        raise DataError(f"{p} must hold a recipe (a YAML mapping), got {type(raw).__name__}; {fix}")
    return raw
