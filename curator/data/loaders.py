"""Load Examples from local files, the Hugging Face hub, or the synthetic task family.

``load_examples(source)`` takes

- a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, a ``save_to_disk`` Dataset or
  DatasetDict directory, or another local dataset folder;
- a hub id, e.g. ``load_examples("openai/gsm8k", config="main", split="train")``;
- ``synthetic`` / ``synthetic:<preset>`` with options, e.g. ``synthetic:easy?n=200&seed=0``.

Columns map to question / solution / answer through ``fields``; without it the GSM8K layout
(``question``, ``answer`` ending ``#### N``) and the MATH layout (``problem``, ``solution`` with
``\\boxed{}``) are recognised, as are files written by ``save_examples`` / ``curate data synth``,
and TRL's layouts: a ``messages`` column (question = the last user turn before the final
assistant turn, solution = that assistant turn) or ``prompt`` / ``completion`` columns (text or
message lists).
Ids come from the source's id column (``id_field``, ``id`` or ``unique_id``), else a content hash.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from curator.data.example import Example, content_id
from curator.data.grading import GSM8KGrader, _answer_is, last_boxed
from curator.data.synthetic import SyntheticTask, synthetic_task
from curator.errors import ConfigError, DataError, did_you_mean
from curator.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".json", ".parquet", ".csv")
ID_COLUMNS = ("id", "unique_id")
# suffixes that mark a source as a file path (so a typo is "file not found", not a hub lookup)
_FILE_LIKE = FORMATS + (".tsv", ".txt", ".gz", ".arrow", ".jsonlines", ".ndjson", ".xlsx")


@dataclass(frozen=True)
class FieldMap:
    """Which source column holds each Example field (None: detect from the layout)."""

    question: str | None = None
    solution: str | None = None
    answer: str | None = None

    @classmethod
    def parse(cls, fields: FieldMap | Mapping[str, str] | Sequence[str] | None) -> FieldMap:
        """From a FieldMap, a mapping ``{"question": "prompt"}`` or ``["question=prompt", ...]``."""
        if fields is None:
            return cls()
        if isinstance(fields, FieldMap):
            return fields
        if not isinstance(fields, Mapping):
            pairs = {}
            for item in fields:
                name, sep, col = str(item).partition("=")
                if not sep or not name.strip() or not col.strip():
                    raise ConfigError(f"field mapping {item!r} must look like NAME=COLUMN, e.g. question=prompt")
                pairs[name.strip()] = col.strip()
            fields = pairs
        unknown = [k for k in fields if k not in ("question", "solution", "answer")]
        if unknown:
            raise ConfigError(
                f"unknown field(s) {', '.join(map(repr, unknown))} in the field mapping; "
                "map question, solution or answer"
            )
        return cls(**{k: (str(v) if v is not None else None) for k, v in fields.items()})


def load_examples(
    source: str | os.PathLike,
    *,
    config: str | None = None,
    split: str = "train",
    fields: FieldMap | Mapping[str, str] | Sequence[str] | None = None,
    limit: int | None = None,
    id_field: str | None = None,
    strict: bool = True,
) -> list[Example]:
    """Load a dataset as Examples.

    Args:
        source: a file path, a hub id, or ``synthetic[:preset][?n=..&seed=..&<task setting>=..]``.
        config, split: the hub dataset's configuration and split (a ``.json`` file holding
            ``{"train": [...], "test": [...]}`` also honours ``split``).
        fields: column names for question / solution / answer.
        limit: keep only the first ``limit`` rows.
        id_field: the column holding stable ids (default: ``id`` or ``unique_id`` if present).
        strict: rows whose fields are missing or whose final answer cannot be parsed raise a
            DataError naming them; with ``strict=False`` they are dropped and the reasons logged.

    Raises:
        DataError: missing file, unknown format, unreachable hub, missing columns, empty data,
            unparseable answers.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    fmap = FieldMap.parse(fields)
    src = os.fspath(source)
    if is_synthetic_source(src):
        return _load_synthetic(src, limit)
    rows, where = _read_rows(src, config, split, limit)
    if not rows:
        raise DataError(f"{where}: the dataset is empty (no rows)")
    if limit is not None:
        rows = rows[:limit]
    return rows_to_examples(rows, fields=fmap, id_field=id_field, strict=strict, where=where)


# ---------------------------------------------------------------- reading


def _read_rows(src: str, config: str | None, split: str, limit: int | None) -> tuple[list[dict], str]:
    path = Path(src).expanduser()
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return _read_saved(path, split, limit), str(path)
    if path.is_dir():
        return _read_hub(str(path), config, split, limit), str(path)
    if path.is_file():
        suffix = path.suffix.lower()
        readers = {
            ".jsonl": _read_jsonl,
            ".json": lambda p: _read_json(p, split),
            ".parquet": _read_parquet,
            ".csv": _read_csv,
        }
        if suffix not in readers:
            raise DataError(
                f"{path}: unknown data format {suffix or '(no extension)'!r}; use one of {', '.join(FORMATS)}"
            )
        return readers[suffix](path), str(path)
    if (
        src.startswith((".", "/", "~"))
        or os.sep in src
        and path.parent.is_dir()
        and path.suffix
        or any(src.lower().endswith(s) for s in _FILE_LIKE)
    ):
        raise DataError(f"{src}: no such file; check the path (hub ids look like 'owner/name')")
    return _read_hub(src, config, split, limit), src


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object")
            rows.append(row)
    return rows


def _read_json(path: Path, split: str) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines saved as .json (common for hub exports)
            return _read_jsonl(path)
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        if isinstance(data.get(split), list):
            data = data[split]
        elif isinstance(data.get("data"), list):
            data = data["data"]
        elif (
            data and all(isinstance(v, list) for v in data.values()) and len({len(v) for v in data.values()}) == 1
        ):  # columnar {"col": [...], ...}
            cols = list(data)
            data = [dict(zip(cols, vals)) for vals in zip(*data.values())]
        else:
            raise DataError(
                f"{path}: expected a list of records, {{'{split}': [...]}}, or columns "
                f"of equal length; found an object with keys {', '.join(list(data)[:8])}"
            )
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records, found a JSON {type(data).__name__}")
    for i, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i} is a JSON {type(row).__name__}, expected an object")
    return data


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet ({str(e).splitlines()[0][:200]})") from e


def _read_csv(path: Path) -> list[dict]:
    import pandas as pd

    try:
        # strings everywhere: answers like "007" or "1/2" must not become numbers or NaN
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse CSV ({str(e).splitlines()[0][:200]})") from e
    return df.to_dict("records")


def _read_saved(path: Path, split: str, limit: int | None) -> list[dict]:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` directory (``split`` picks from a dict)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # a half-copied or foreign directory
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(
            f"{path}: cannot read this save_to_disk dataset ({reason}); re-save it with Dataset.save_to_disk"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"{path}: the saved DatasetDict has no split {split!r}; available: "
                f"{', '.join(ds)} (CLI: --split; Python: split=)"
            )
        ds = ds[split]
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds.to_list()


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub endpoint cannot be reached (DNS or TCP), or None when it can."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


def _read_hub(source: str, config: str | None, split: str, limit: int | None) -> list[dict]:
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if not offline and not Path(source).is_dir():
        # without this check an offline machine spends ~25 s in the hub client's retries
        problem = _hub_unreachable()
        if problem:
            raise DataError(
                f"cannot load {source!r}: the Hugging Face hub is unreachable ({problem}). Pass a "
                "local .jsonl/.json/.parquet/.csv file or 'synthetic:easy' instead, or set "
                "HF_HUB_OFFLINE=1 to use a copy in the local datasets cache"
            )
    import datasets

    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # network, unknown id, bad config/split: all mean "cannot load this"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        cfg = f", config {config!r}" if config else ""
        raise DataError(
            f"cannot load {source!r} (split {split!r}{cfg}) with datasets.load_dataset: {reason}. "
            "The hub may be unreachable from this machine (offline) or the id, config or split is "
            "wrong; pass a local .jsonl/.json/.parquet/.csv file or 'synthetic:easy' instead"
        ) from e
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return ds.to_list()


# ---------------------------------------------------------------- rows -> Examples


def _suggest(name: str, columns: Sequence[str]) -> str:
    return did_you_mean(name, columns, cutoff=0.5, parens=True)


def _final_answer(text: str) -> str | None:
    """The final answer written in a reference solution: ``#### N``, ``\\boxed{}``, "The answer is"."""
    if "####" in text:
        return GSM8KGrader().extract(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    return _answer_is(text)


def _message_text(value: Any, role: str) -> Any:
    """The content of the last ``role`` turn of a message list (a plain string passes through)."""
    if isinstance(value, str) or value is None:
        return value
    turns = [m for m in value if isinstance(m, Mapping) and m.get("role") == role]
    return turns[-1].get("content") if turns else None


def _from_trl_row(row: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """question/solution from a TRL-style row: the last user turn and the final assistant turn."""
    out = dict(row)
    if layout == "messages":
        msgs = list(out.pop("messages") or [])
        last_assistant = max(
            (i for i, m in enumerate(msgs) if isinstance(m, Mapping) and m.get("role") == "assistant"), default=None
        )
        before = msgs[:last_assistant] if last_assistant is not None else msgs
        out["question"] = _message_text(before, "user")
        out["solution"] = msgs[last_assistant].get("content") if last_assistant is not None else None
        system = _message_text(before, "system")
        if system:
            out.setdefault("system", system)
    else:
        out["question"] = _message_text(out.pop("prompt"), "user")
        out["solution"] = _message_text(out.pop("completion"), "assistant")
    return out


def rows_to_examples(
    rows: Sequence[Mapping[str, Any]],
    *,
    fields: FieldMap | Mapping | None = None,
    id_field: str | None = None,
    strict: bool = True,
    where: str = "dataset",
) -> list[Example]:
    """Turn source records into Examples (the column logic of `load_examples`)."""
    fmap = FieldMap.parse(fields)
    if not rows:
        raise DataError(f"{where}: the dataset is empty (no rows)")
    rows, columns = _columns_and_layout(rows, fmap)
    plan = _plan_columns(fmap, id_field, columns, where)
    examples, bad, n_dup = _convert_rows(rows, plan, where)
    n_bad = sum(len(v) for v in bad.values())
    if n_bad:
        parts = [
            f"{reason}: {len(rows_)} row(s), e.g. row {', '.join(map(str, rows_[:5]))}" for reason, rows_ in bad.items()
        ]
        summary = f"{n_bad} of {len(rows)} rows unusable — " + "; ".join(parts)
        if strict:
            raise DataError(
                f"{where}: {summary}; available columns: {', '.join(columns)}. Fix or map the "
                "columns, or pass strict=False (CLI: --lenient) to drop these rows"
            )
        log.warning("%s: dropped %s", where, summary)
    if n_dup:
        log.warning("%s: dropped %d exact duplicate row(s)", where, n_dup)
    if not examples:
        raise DataError(f"{where}: no usable rows")
    return examples


def _columns_and_layout(
    rows: Sequence[Mapping[str, Any]], fmap: FieldMap
) -> tuple[Sequence[Mapping[str, Any]], list[str]]:
    """Every column in first-seen order; TRL's chat layouts become question/solution rows."""
    columns: list[str] = []
    seen_cols: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen_cols:
                seen_cols.add(k)
                columns.append(k)
    if fmap.question is None and fmap.solution is None and not seen_cols & {"question", "problem"}:
        # TRL's layouts: a messages column, or prompt/completion (plain text or message lists)
        chat_layout = (
            "messages"
            if "messages" in seen_cols
            else "prompt-completion"
            if {"prompt", "completion"} <= seen_cols
            else None
        )
        if chat_layout is not None:
            rows = [_from_trl_row(row, chat_layout) for row in rows]
            columns += [c for c in ("question", "solution") if c not in seen_cols]
    return rows, columns


@dataclass(frozen=True)
class _ColumnPlan:
    """Which column holds each field, and the layout they were recognised as."""

    question: str
    solution: str
    answer: str | None
    id: str | None
    layout: str  # mapped | plain | math | gsm8k

    @property
    def used(self) -> set[str | None]:
        return {self.question, self.solution, self.answer, self.id}


def _plan_columns(fmap: FieldMap, id_field: str | None, columns: list[str], where: str) -> _ColumnPlan:
    """The field -> column mapping (explicit mappings first, then the known layouts); a DataError
    naming the available columns when a field has none."""
    seen_cols, avail = set(columns), ", ".join(columns)

    def check(field: str, col: str | None) -> str | None:
        if col is not None and col not in seen_cols:
            raise DataError(
                f"{where}: field {field!r} is mapped to column {col!r}, which does not "
                f"exist{_suggest(col, columns)}; available columns: {avail}"
            )
        return col

    q_col = check("question", fmap.question) or next((c for c in ("question", "problem") if c in seen_cols), None)
    s_col = check("solution", fmap.solution)
    a_col = check("answer", fmap.answer)
    layout = "mapped"
    if s_col is None:
        if "solution" in seen_cols:
            s_col, layout = "solution", "math" if "problem" in seen_cols else "plain"
        elif "answer" in seen_cols and a_col in (None, "answer"):
            # GSM8K: the answer column is the whole worked solution ending in "#### N"
            s_col, a_col, layout = "answer", None, "gsm8k"
    if a_col is None and layout != "gsm8k" and "answer" in seen_cols and s_col != "answer":
        a_col = "answer"
    hint = " (CLI: --field {0}=COLUMN; Python: fields={{'{0}': COLUMN}})"
    if q_col is None:
        raise DataError(
            f"{where}: no question column (looked for 'question', 'problem'); available "
            f"columns: {avail}; map one{hint.format('question')}"
        )
    if s_col is None:
        raise DataError(
            f"{where}: no solution column (looked for 'solution', or a GSM8K-style "
            f"'answer'); available columns: {avail}; map one{hint.format('solution')}"
        )
    if id_field is not None and id_field not in seen_cols:
        raise DataError(
            f"{where}: id column {id_field!r} does not exist{_suggest(id_field, columns)}; available columns: {avail}"
        )
    id_col = id_field or next((c for c in ID_COLUMNS if c in seen_cols), None)
    return _ColumnPlan(q_col, s_col, a_col, id_col, layout)


def _row_texts(row: Mapping[str, Any], plan: _ColumnPlan) -> tuple[str, str, str] | str:
    """(question, solution, final answer) of one row, or the reason it is unusable."""
    q, s = row.get(plan.question), row.get(plan.solution)
    if q is None or str(q).strip() == "":
        return f"field 'question' (column {plan.question!r}) is missing or empty"
    if s is None or str(s).strip() == "":
        return f"field 'solution' (column {plan.solution!r}) is missing or empty"
    q, s = str(q), str(s)
    ans = row.get(plan.answer) if plan.answer else None
    ans = "" if ans is None else str(ans).strip()
    if ans and ("####" in ans or "\\boxed" in ans):  # an answer column holding a solution
        ans = _final_answer(ans) or ""
    if not ans:
        ans = _final_answer(s) or ""
    if not ans:
        if not plan.answer:
            return "no final answer in the solution (expected '#### N', \\boxed{...} or 'The answer is ...')"
        return f"field 'answer' (column {plan.answer!r}) is empty and the solution has no final answer"
    return q, s, ans


def _row_meta(row: Mapping[str, Any], plan: _ColumnPlan, where: str, i: int) -> dict[str, Any]:
    """The row's ``meta`` mapping, its other scalar columns, and where it came from."""
    meta: dict[str, Any] = {}
    extra = row.get("meta")
    if isinstance(extra, Mapping):
        meta.update(extra)
    used = plan.used
    for k, v in row.items():
        if k not in used and k != "meta" and (v is None or isinstance(v, (str, int, float, bool))):
            meta.setdefault(k, v)
    meta.setdefault("source", where)
    meta.setdefault("row", i)
    if plan.layout in ("gsm8k", "math"):
        meta.setdefault("layout", plan.layout)
    return meta


def _convert_rows(
    rows: Sequence[Mapping[str, Any]], plan: _ColumnPlan, where: str
) -> tuple[list[Example], dict[str, list[int]], int]:
    """The usable rows as Examples; the unusable ones' row numbers per reason; the count of exact
    duplicates dropped. A DataError for a repeated id in the id column."""
    examples: list[Example] = []
    bad: dict[str, list[int]] = {}
    ids: dict[str, int] = {}
    n_dup = 0
    for i, row in enumerate(rows, 1):
        texts = _row_texts(row, plan)
        if isinstance(texts, str):
            bad.setdefault(texts, []).append(i)
            continue
        q, s, ans = texts
        if plan.id is not None:
            raw_id = row.get(plan.id)
            if raw_id is None or str(raw_id).strip() == "":
                bad.setdefault(f"id column {plan.id!r} is missing or empty", []).append(i)
                continue
            ex_id = str(raw_id)
            if ex_id in ids:
                raise DataError(
                    f"{where}: duplicate id {ex_id!r} in rows {ids[ex_id]} and {i} of "
                    f"column {plan.id!r}; ids must be unique (fix the column, or remove it "
                    "to use content hashes)"
                )
        else:
            ex_id = content_id(q, s)
            if ex_id in ids:  # an exact duplicate row is the same example
                n_dup += 1
                continue
        ids[ex_id] = i
        examples.append(Example(id=ex_id, question=q, solution=s, answer=ans, meta=_row_meta(row, plan, where, i)))
    return examples, bad, n_dup


# ---------------------------------------------------------------- synthetic


def is_synthetic_source(source: str | os.PathLike) -> bool:
    src = os.fspath(source)
    return src == "synthetic" or src.startswith(("synthetic:", "synthetic?"))


def _parse_synthetic(spec: str) -> tuple[Any, int, int]:
    """``synthetic[:preset][?n=..&seed=..&<task setting>=..]`` -> (task, n, seed)."""
    head, _, query = spec.partition("?")
    preset = head.partition(":")[2] or "easy"
    opts: dict[str, Any] = {}
    n, seed = 1000, 0
    fields = SyntheticTask.__dataclass_fields__
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "skills":
            opts[key] = tuple(s for s in value.split(",") if s)
            continue
        if key not in ("n", "seed") and key not in fields:
            raise ConfigError(f"{spec}: unknown option {key!r}; use n, seed, " + ", ".join(f for f in fields))
        try:
            ival = int(value)
        except ValueError:
            raise ConfigError(f"{spec}: option {key}={value!r} must be an integer") from None
        if key == "n":
            n = ival
        elif key == "seed":
            seed = ival
        else:
            opts[key] = ival
    if n < 1:
        raise ConfigError(f"{spec}: n must be >= 1, got {n}")
    return synthetic_task(preset, **opts), n, seed


def _load_synthetic(spec: str, limit: int | None) -> list[Example]:
    task, n, seed = _parse_synthetic(spec)
    return task.generate(min(n, limit) if limit else n, seed=seed)


def synthetic_task_from_source(source: str | os.PathLike):
    """The SyntheticTask a ``synthetic:...`` source names (its ``n`` and ``seed`` are ignored)."""
    if not is_synthetic_source(source):
        raise ConfigError(
            f"{os.fspath(source)!r} is not a synthetic source; a generator needs "
            "'synthetic[:easy|medium|hard][?setting=value...]'"
        )
    return _parse_synthetic(os.fspath(source))[0]


def save_examples(examples: Iterable[Example], path: str | os.PathLike) -> int:
    """Write Examples as JSON lines (id, question, solution, answer, meta); returns the count."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:  # readers never see half a file
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
