"""Errors meant for people.

`CuratorError` is the one exception type that the CLI turns into a one-line message and exit
code 2. Raise it (or a subclass) for anything the user can fix: bad input, a missing extra, an
unreachable store. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
        super().__init__(
            f"{purpose} needs the '{package}' package: pip install 'premem-curator[{extra}]'"
        )


class StrategyError(CuratorError):
    """A selection strategy is unknown, misconfigured, or broke its contract."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or fail with the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(module.split(".")[0], extra, purpose) from e
