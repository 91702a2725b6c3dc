"""Errors meant for people.

`CuratorError` is the one exception type that the CLI turns into a one-line message and exit
code 2. Raise it (or a subclass) for anything the user can fix: bad input, a missing extra, an
unreachable store. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CuratorError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class ConfigError(CuratorError):
    """A recipe or argument is invalid. May carry several problems, reported at once."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = where + self.problems[0]
        else:
            msg = where + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class DataError(CuratorError):
    """A dataset is missing, malformed, or does not grade as expected."""


class MissingExtraError(CuratorError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the '{package}' package: pip install 'premem-curator[{extra}]'")


class StrategyError(CuratorError):
    """A selection strategy is unknown, misconfigured, or broke its contract."""


class RoutingError(CuratorError):
    """Routing asked of a model or setting that cannot give it."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or fail with the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(module.split(".")[0], extra, purpose) from e


class RankFailure(CuratorError):
    """Another process of the launch stopped (or timed out) during a collective."""


class PluginError(CuratorError):
    """Third-party code (a strategy, loop, grader or sampler plugin) failed to import or build."""


def closest(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice most like ``name`` (difflib's similarity ratio >= ``cutoff``), or None."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], *, cutoff: float = 0.6, parens: bool = False) -> str:
    """The suggestion to append to an "unknown name" message: `` Did you mean 'x'?``, or with
    ``parens`` `` (did you mean 'x'?)``; ``""`` when no choice is close enough."""
    close = closest(name, choices, cutoff)
    if close is None:
        return ""
    return f" (did you mean {close!r}?)" if parens else f" Did you mean {close!r}?"


def describe_exception(e: BaseException) -> str:
    """``TypeName: message`` on one line, for wrapping a plugin's or the OS's error."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def user_error_line(e: BaseException) -> str | None:
    """The one line the CLI prints for an error the user can fix, or None for a bug.

    Besides CuratorError, two kinds of builtin error are the user's to fix wherever they are
    raised: files that are not UTF-8 text, and OS-level failures on the paths they gave (missing,
    unwritable, read-only, disk full). Catching them here, once, keeps every command and every
    plugin under the same rule instead of wrapping each open() in the code base.
    """
    import errno

    if isinstance(e, CuratorError):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        name = _file_in_traceback(e)
        what = repr(name) if name else "a data or recipe file"
        return (
            f"{what} is not UTF-8 text ({e.reason}: byte {e.object[e.start : e.start + 1]!r} at "
            f"offset {e.start}); save it as UTF-8"
        )
    if isinstance(e, OSError):
        path = e.filename if e.filename is not None else None
        where = f"{str(path)!r}" if path is not None else "a file"
        reason = e.strerror or describe_exception(e)
        hint = {
            errno.ENOSPC: "free some space or set output_dir on another disk",
            errno.EDQUOT: "free some space or set output_dir on another disk",
            errno.EACCES: "check its permissions or choose another output_dir",
            errno.EPERM: "check its permissions or choose another output_dir",
            errno.EROFS: "the file system is read-only; choose another output_dir",
            errno.ENOENT: "check the path",
            errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
            errno.EISDIR: "the path is a directory; give a file",
            errno.EEXIST: "a file is in the way where a directory is needed; check the path",
        }.get(e.errno or 0, "check the path and the disk")
        return f"{where}: {reason}; {hint}"
    return None


def _file_in_traceback(e: BaseException) -> str | None:
    """The name of the open text file being decoded when ``e`` was raised, if a frame holds one."""
    import io

    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.TextIOWrapper) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None
