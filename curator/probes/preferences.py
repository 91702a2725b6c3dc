"""Preference rows (a prompt with a chosen y+ and a rejected y-), from files or synthetic tasks.

The synthetic preference set ships offline: curator's synthetic tasks carry several valid solution
traces per problem (``meta["traces"]``). y+ is the example's target trace; y- is the same trace
with one wrong step — the last arithmetic step's result is off by a small seeded amount, and the
final ``#### answer`` line follows it, so y- reads fluently and differs from y+ only where the
reasoning goes wrong. A second valid trace, and the same wrong step applied to it, are the
rephrasings of y+ and y- (same meaning, different wording and order).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.data.example import Example, content_id
from curator.data.loaders import is_synthetic_source, load_examples
from curator.errors import DataError

# columns of a preference file; the question may also be called "prompt"
REQUIRED = ("chosen", "rejected")
OPTIONAL = ("chosen_rephrase", "rejected_rephrase", "id")


@dataclass(frozen=True)
class PreferenceRow:
    """One prompt with a chosen and a rejected response (solution texts, before the target template).

    ``chosen_rephrase`` / ``rejected_rephrase`` are optional rephrasings with the same meaning.
    """

    id: str
    question: str
    chosen: str
    rejected: str
    chosen_rephrase: str | None = None
    rejected_rephrase: str | None = None

    def example(self, which: str = "chosen") -> Example:
        """The row as an Example whose solution is the chosen (or rejected) response, for SFT."""
        return Example(
            id=f"{self.id}:{which}",
            question=self.question,
            solution=getattr(self, which),
            answer="",
            meta={"preference_id": self.id, "response": which},
        )


# -- synthetic ----------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\d.])\d+(?![\d.])")


def corrupt_last_step(trace: str, wrong: int) -> str:
    """`trace` with its last arithmetic step's result replaced by `wrong`, and the final answer too.

    The last step is the last line before ``#### answer`` that holds ``=``; every whole number
    equal to the answer after that ``=`` becomes `wrong` (operands before it are kept).

    Raises DataError when the trace has no ``####`` line or no arithmetic line before it.
    """
    lines = trace.split("\n")
    final = next((k for k in range(len(lines) - 1, -1, -1) if lines[k].startswith("####")), None)
    if final is None:
        raise DataError(f"trace {trace[:40]!r}... has no '#### answer' line; cannot make a wrong step")
    answer = lines[final][4:].strip()
    step = next((k for k in range(final - 1, -1, -1) if "=" in lines[k]), None)
    if step is None:
        raise DataError(f"trace {trace[:40]!r}... has no arithmetic line ('=') before its answer")
    head, eq, tail = lines[step].partition("=")
    tail = _NUMBER.sub(lambda m: str(wrong) if m.group() == answer else m.group(), tail)
    lines[step] = head + eq + tail
    lines[final] = f"#### {wrong}"
    return "\n".join(lines)


def wrong_answer(answer: int, rng: random.Random) -> int:
    """A non-negative integer 1..9 away from `answer` (a plausible slip, never the answer)."""
    options = [answer + d for d in range(-9, 10) if d != 0 and answer + d >= 0]
    return rng.choice(options)


def synthetic_preferences(examples: Sequence[Example], seed: int = 0) -> list[PreferenceRow]:
    """Preference rows from synthetic-task Examples (see the module docstring).

    The wrong value is drawn per example from a stream seeded by (seed, example id), so a row does
    not depend on the other examples. The rephrasings come from the example's next valid trace
    (absent when the task made only one trace).

    Raises DataError for an example without ``meta["traces"]`` or with a non-integer answer.
    """
    rows = []
    for i, ex in enumerate(examples):
        traces = list(ex.meta.get("traces") or [])
        if not traces:
            raise DataError(
                f"example {i} (id {ex.id}) has no meta['traces']; synthetic preferences need "
                "curator's synthetic tasks (source 'synthetic:...')"
            )
        try:
            answer = int(ex.answer)
        except ValueError:
            raise DataError(f"example {i} (id {ex.id}) has answer {ex.answer!r}, not an integer") from None
        wrong = wrong_answer(answer, random.Random(f"{seed}|{ex.id}|wrong"))
        chosen = ex.solution
        others = [t for t in traces if t != chosen]
        rephrase = others[0] if others else None
        rows.append(
            PreferenceRow(
                id=ex.id,
                question=ex.question,
                chosen=chosen,
                rejected=corrupt_last_step(chosen, wrong),
                chosen_rephrase=rephrase,
                rejected_rephrase=corrupt_last_step(rephrase, wrong) if rephrase else None,
            )
        )
    return rows


# -- files ----------------------------------------------------------------------------------------


def rows_to_preferences(rows: Sequence[dict[str, Any]], where: str) -> list[PreferenceRow]:
    """Validate raw rows (dicts) into PreferenceRows.

    Raises DataError naming the first bad row: a missing or empty question, chosen or rejected.
    """
    if not rows:
        raise DataError(f"{where}: no rows")
    out = []
    for i, r in enumerate(rows):
        q = r.get("question", r.get("prompt"))
        if not isinstance(q, str) or not q.strip():
            raise DataError(f"{where}: row {i} has no question (a non-empty 'question' or 'prompt' column)")
        vals: dict[str, Any] = {}
        for col in REQUIRED:
            v = r.get(col)
            if v is None:
                raise DataError(
                    f"{where}: row {i} has no '{col}' response; every probe/preference row needs "
                    "both 'chosen' (y+) and 'rejected' (y-)"
                )
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{where}: row {i} has an empty '{col}' response; give a non-empty text")
            vals[col] = v
        for col in ("chosen_rephrase", "rejected_rephrase"):
            v = r.get(col)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise DataError(f"{where}: row {i} has an empty '{col}'; give a text or leave the column out")
            vals[col] = v
        rid = str(r.get("id") or content_id(q, vals["chosen"]))
        out.append(PreferenceRow(id=rid, question=q, **vals))
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise DataError(f"{where}: id {dup!r} appears more than once; ids must be unique")
    return out


def load_preferences(source: str | os.PathLike, seed: int = 0, limit: int | None = None) -> list[PreferenceRow]:
    """Preference rows from ``synthetic[:preset][?...]`` or a .jsonl/.json/.parquet/.csv file.

    A file needs ``question`` (or ``prompt``), ``chosen`` and ``rejected`` columns; ``id``,
    ``chosen_rephrase`` and ``rejected_rephrase`` are optional.
    """

    src = os.fspath(source)
    if is_synthetic_source(src):
        return synthetic_preferences(load_examples(src, limit=limit), seed=seed)
    path = Path(src)
    if not path.exists():
        raise DataError(f"preference file {src!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path) as f:
            rows = []
            for n, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{src}: line {n + 1} is not JSON ({e.msg})") from None
    elif suffix == ".json":
        rows = json.loads(path.read_text())
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
        rows = [{k: (None if v == "" else v) for k, v in r.items()} for r in df.to_dict("records")]
    else:
        raise DataError(f"{src}: unknown preference file type {suffix!r}; use .jsonl, .json, .parquet or .csv")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{src}: expected a list of objects (one per row)")
    if rows and not any("rejected" in r for r in rows) and any("solution" in r for r in rows):
        raise DataError(
            f"{src}: rows have a 'solution' but no 'rejected' column: this is an SFT set, not "
            "preference pairs; DPO and probes need 'chosen' and 'rejected' per row"
        )
    if limit is not None:
        rows = rows[:limit]
    return rows_to_preferences(rows, src)
