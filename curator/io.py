"""Small file helpers: atomic writes (a crash never leaves a half-written file) and jsonl.

Every write that must appear whole goes through `atomic_path` (any writer that takes a path) or
the `atomic_write_*` functions built on it (bytes, text, JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from curator.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for any writer that takes a path (parquet, sqlite,
    ``torch.save``, ``save_pretrained``); renamed onto ``path`` when the block ends without error,
    removed when it raises. A crash never leaves half a file where readers look.

    The temporary path is in the same directory (a rename within one file system is atomic), named
    ``.NAME.tmp-PID-RANDOM``, and does not exist yet; with ``directory=True`` it is made as an
    empty directory. A file replaces an existing file in one step. A directory cannot replace
    anything in one step: what is at ``path`` is moved aside first and deleted after the rename
    (readers see the old or the new one, or for an instant none) — unless ``keep_existing``, for
    caches that any process may fill: then an existing ``path`` (another process finished first,
    written the same way) is kept and ours dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if keep_existing:
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.exists():
                    raise
        elif tmp.is_dir() or path.is_dir():
            _replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _replace_dir(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
