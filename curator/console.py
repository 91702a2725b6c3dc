"""What a person sees while curator works: one progress line per phase, no library noise.

- `progress(...)`: a tqdm bar for a phase. A phase started while another's bar is open (sampling
  at a checkpoint, inside finetuning) does not draw a second bar that fights the first for the
  terminal: it shows as ``sampling @ checkpoint 1 12/32`` at the end of the open bar's line, and
  the line returns to the outer phase when it closes.
- `echo(...)`: a line of text that does not break an open bar.
- `quiet_libraries()` / `set_verbose()`: warnings and log chatter of transformers, peft, torch,
  mlflow, accelerate, datasets ... are kept out of normal output; ``curate --verbose`` shows them.

Importing this module imports tqdm only; library loggers are configured through the environment
variables they read at import, so that nothing heavy is imported to silence it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from tqdm.auto import tqdm

# libraries whose warnings and INFO/WARNING logs are not for the person running `curate`
LIBRARIES = (
    "transformers",
    "peft",
    "torch",
    "mlflow",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "trl",
    "alembic",
    "urllib3",
    "filelock",
    "math_verify",
    "sentence_transformers",
    "vllm",
)
# env var -> value in quiet mode: read by each library when it configures its logger at import
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",  # its fork warning; curator does not tokenize in parallel workers
}


class Progress(Protocol):
    """What `progress` returns: the part of tqdm's interface curator uses."""

    disable: bool
    n: int
    total: int | None

    def update(self, n: float = 1) -> Any: ...

    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> Any: ...


_verbose = False
_open: list[Any] = []  # the stack of open bars (real tqdm bars and nested phases)


def is_verbose() -> bool:
    return _verbose


def set_verbose(verbose: bool) -> None:
    """``curate --verbose``: library warnings and logs shown; otherwise `quiet_libraries`."""
    global _verbose
    _verbose = verbose
    if verbose:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for name in LIBRARIES:
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger("curator").setLevel(logging.INFO)
    else:
        quiet_libraries()


def quiet_libraries() -> None:
    """Keep library warnings and log chatter out of the console (curate's default).

    Python warnings are ignored except those raised from curator's own code; the libraries' loggers
    show errors only. Environment variables carry the same setting into libraries imported later
    and into worker processes (``accelerate launch``); a variable the user set is left alone.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # worker processes
    warnings.simplefilter("ignore")
    # filters added later take precedence: curator's own warnings still show
    warnings.filterwarnings("default", module=r"(curator|strategies|loops)(\.|$)")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)


def echo(message: str = "", err: bool = False) -> None:
    """Print a line without tearing an open progress bar."""
    tqdm.write(message, file=sys.stderr if err else sys.stdout)


def _forget(bar: object) -> None:
    # by identity: tqdm bars compare equal by their position, not by who they are
    _open[:] = [b for b in _open if b is not bar]


class _NestedPhase:
    """A phase inside an open bar: shown as ``desc n/total`` at the end of that bar's line."""

    def __init__(self, parent: Any, iterable: Iterable[Any] | None, total: int | None, desc: str, disable: bool):
        self.parent, self.iterable, self.desc, self.disable = parent, iterable, desc, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n = total, 0
        self._saved = getattr(parent, "postfix", None) or ""
        self._closed = False
        self._show()

    def _show(self) -> None:
        if self.disable or self._closed:
            return
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        text = f"{self.desc} {count}".strip()
        self.parent.set_postfix_str(f"{self._saved}, {text}" if self._saved else text, refresh=True)

    def update(self, n: float = 1) -> None:
        self.n += int(n)
        self._show()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass  # one line per phase: the inner phase shows its count only

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""
        self._show()

    def refresh(self) -> None:
        self._show()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _forget(self)
        if not self.disable:
            self.parent.set_postfix_str(self._saved, refresh=True)

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "iterate a progress() made from an iterable"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> _NestedPhase:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Bar(tqdm):
    """A tqdm bar that leaves the stack of open bars when it closes."""

    def close(self) -> None:
        _forget(self)
        super().close()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool | None = None,
    **kwargs: Any,
) -> Progress:
    """A progress display for one phase (tqdm's interface: ``update``, ``set_postfix``, ``close``,
    iteration, ``with``).

    The outermost open phase owns the terminal line; a phase opened inside it reports on that line
    (see the module docstring). When stderr is not a terminal (a CI log, ``2> file``) bars redraw
    at most every 30 s instead of filling the log with carriage returns.

    Args:
        leave: keep the finished bar on screen; default: only a top-level phase does.
    """
    parent = next((b for b in reversed(_open) if not getattr(b, "disable", False)), None)
    if parent is not None:
        root = parent.parent if isinstance(parent, _NestedPhase) else parent
        phase = _NestedPhase(root, iterable, total, desc, disable)
        _open.append(phase)
        return phase
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    bar = _Bar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        leave=True if leave is None else leave,
        dynamic_ncols=True,
        **kwargs,
    )
    if not disable:
        _open.append(bar)
    return bar
