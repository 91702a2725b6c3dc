"""One small generic registry for every pluggable kind (strategies, loops, graders, sources).

Entries are registered with a decorator, or lazily as a ``"module:Attr"`` string so that importing
curator never imports the thing registered. Third parties add entries through an entry-point
group (e.g. ``curator.strategies``), and a recipe may name a ``module:Class`` path directly.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from curator.errors import CuratorError

T = TypeVar("T")


def import_target(path: str, what: str = "object") -> Any:
    """Import ``"package.module:Attr"``; a clear CuratorError when it does not resolve."""
    if ":" not in path:
        raise CuratorError(f"{what} path {path!r} must look like 'package.module:Name'")
    mod_name, _, attr = path.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise CuratorError(f"{what} {path!r}: cannot import module {mod_name!r} ({e})") from e
    except Exception as e:  # a plugin module that raises anything while importing is still the plugin's fault
        from curator.errors import PluginError, describe_exception

        raise PluginError(f"{what} {path!r}: importing {mod_name!r} failed ({describe_exception(e)}); "
                          "fix the plugin or remove it from the recipe (--debug shows the traceback)") from e
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CuratorError(f"{what} {path!r}: module {mod_name!r} has no attribute {attr!r}") from None
    return obj


class Registry(Generic[T]):
    """Name -> object (or lazy ``module:Attr`` target) for one kind of plugin."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T | str] = {}
        self._entry_points_loaded = False

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | None:
        """``@registry.register("name")`` on a class, or ``registry.register("name", "mod:Cls")``."""
        if target is not None:
            self._add(name, target)
            return None

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, target: T | str) -> None:
        old = self._entries.get(name)
        if old is not None and old is not target and not isinstance(old, str):
            # re-registering the same name with a different object is a plugin clash, not an update
            if not (isinstance(target, str) or getattr(old, "__qualname__", None) == getattr(target, "__qualname__", 0)):
                raise CuratorError(f"{self.kind} {name!r} is registered twice ({old!r} and {target!r})")
        self._entries[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """Resolve a registered name or a ``module:Attr`` path."""
        self._load_entry_points()
        if name not in self._entries:
            if ":" in name:
                return import_target(name, self.kind)
            raise CuratorError(self.unknown_message(name))
        target = self._entries[name]
        if isinstance(target, str):
            target = import_target(target, f"{self.kind} {name!r}")
            self._entries[name] = target
        return target

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}"
                f" — or give a 'package.module:Class' path")
