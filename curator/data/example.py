"""The Example record: one reasoning problem with its target solution and final answer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curator.io import atomic_write_text


def content_id(question: str, solution: str) -> str:
    """Stable id from content, for sources that have none (16 hex chars of sha1)."""
    h = hashlib.sha1()
    h.update(question.encode("utf-8"))
    h.update(b"\x00")
    h.update(solution.encode("utf-8"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Example:
    """One training or candidate example.

    Attributes:
        id: stable identifier; a content hash when the source has none.
        question: the query x_i.
        solution: the target reasoning y_i, including the final-answer line.
        answer: the canonical final answer used for grading.
        meta: anything else (source row, synthetic-task structure, parent id ...).
    """

    id: str
    question: str
    solution: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def make(cls, question: str, solution: str, answer: str, id: str | None = None, **meta: Any) -> Example:
        return cls(
            id=id or content_id(question, solution), question=question, solution=solution, answer=answer, meta=meta
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "solution": self.solution,
            "answer": self.answer,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(
            id=str(d["id"]),
            question=d["question"],
            solution=d["solution"],
            answer=str(d["answer"]),
            meta=dict(d.get("meta") or {}),
        )


# the round directory's example files (one JSON object per line, written atomically)
def write_examples_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    atomic_write_text(path, "".join(json.dumps(e.to_dict(), default=str) + "\n" for e in examples))


def read_examples_jsonl(path: str | os.PathLike) -> list[Example]:
    with open(path) as f:
        return [Example.from_dict(json.loads(line)) for line in f if line.strip()]
