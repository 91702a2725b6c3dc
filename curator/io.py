"""Small file helpers: atomic writes (a crash never leaves a half-written file) and jsonl."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curator.data.example import Example
from curator.errors import DataError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file curator wrote; a damaged one is a DataError naming it (its writer is atomic,
    so damage means a hand edit, a disk fault or a copy cut short)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(
            f"{path} is damaged (not valid JSON: {' '.join(str(e).split())[:120]}); restore it, or "
            "delete it (or the round folder holding it) so that it is made again"
        ) from None


def write_examples_jsonl(path: str | os.PathLike, examples: Iterable[Example]) -> None:
    atomic_write_text(path, "".join(json.dumps(e.to_dict(), default=str) + "\n" for e in examples))


def read_examples_jsonl(path: str | os.PathLike) -> list[Example]:
    with open(path) as f:
        return [Example.from_dict(json.loads(line)) for line in f if line.strip()]
