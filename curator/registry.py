"""One small generic registry for every pluggable kind: strategies, loops, graders, sampler
backends, synthetic presets and skills, model aliases, MoE layouts, probe families.

Entries are registered with a decorator, or lazily as a ``"module:Attr"`` string so that importing
curator never imports the thing registered. Third parties add entries through an entry-point
group (e.g. ``curator.strategies``), and a recipe may name a ``module:Class`` path directly.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from curator.errors import CuratorError, PluginError, describe_exception, did_you_mean

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
        raise PluginError(
            f"{what} {path!r}: importing {mod_name!r} failed ({describe_exception(e)}); "
            "fix the plugin or remove it from the recipe (--debug shows the traceback)"
        ) from e
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CuratorError(f"{what} {path!r}: module {mod_name!r} has no attribute {attr!r}") from None
    return obj


def target_path(target: object) -> str | None:
    """``"module:QualName"`` of a registered class or function, the string itself for a lazy target,
    None for anything else (an instance)."""
    if isinstance(target, str):
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}:{qualname}" if module and qualname else None


class Registry(Generic[T]):
    """Name -> object (or lazy ``module:Attr`` target) for one kind of plugin.

    A name has one owner: registering it again with something else — a plugin reusing a built-in
    name, or two plugins the same name — raises a CuratorError that names both sources, instead of
    one silently replacing the other. Registering the same target again (a reloaded module, a lazy
    ``"mod:Cls"`` and then ``Cls`` itself) is not a clash.

    Args:
        base: entries must be instances of ``base`` or subclasses of it; checked when an object is
            registered and when a lazy target is first resolved, so a wrong entry fails where it is
            added, not where it is used.
        ordered: `names` in registration order instead of sorted, for kinds whose order means
            something (a seeded draw indexes the skills; messages list layouts as the docs do).
    """

    def __init__(
        self, kind: str, entry_point_group: str | None = None, *, base: type | None = None, ordered: bool = False
    ):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self.ordered = ordered
        self._entries: dict[str, T | str] = {}
        self._sources: dict[str, str] = {}  # name -> where it was registered, for clash messages
        self._entry_points_loaded = False

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, target: T | str) -> None: ...

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | None:
        """``@registry.register("name")`` on a class, or ``registry.register("name", "mod:Cls")``."""
        if target is not None:
            self._add(name, target)
            return None

        def deco(obj: T) -> T:
            self._add(name, obj)
            return obj

        return deco

    def _add(self, name: str, target: T | str, source: str | None = None) -> None:
        """The one place entries come in (code and entry points): refuses a second owner of a name."""
        if not isinstance(target, str):
            self._check_base(name, target)
        path = target_path(target)
        source = source or (repr(path) if path else repr(target))
        if name in self._entries:
            old = self._entries[name]
            old_path = target_path(old)
            if old is not target and (path is None or path != old_path):
                raise CuratorError(
                    f"{self.kind} {name!r} is registered twice: by {self._sources.get(name, repr(old))} and by "
                    f"{source}. Rename one of them (a plugin must not reuse a built-in name), or uninstall "
                    f"the plugin you do not want"
                )
            return  # the same target again: keep the first entry (it may already be resolved)
        self._entries[name] = target
        self._sources[name] = source

    def _check_base(self, name: str, target: object) -> None:
        base = self.base
        if base is None or isinstance(target, base) or (isinstance(target, type) and issubclass(target, base)):
            return
        raise CuratorError(
            f"{self.kind} {name!r} must be a {base.__name__} (an instance or a subclass), got {target!r}; "
            f"register a {base.__name__}"
        )

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            dist = getattr(ep, "dist", None)
            owner = f"the package {dist.name!r}" if dist is not None else "an installed package"
            self._add(ep.name, ep.value, source=f"{owner} (entry point {ep.name} = {ep.value})")

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._entries) if self.ordered else sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def items(self) -> list[tuple[str, T]]:
        """(name, resolved entry) in `names` order; resolves lazy targets."""
        return [(name, self.get(name)) for name in self.names()]

    def get(self, name: str) -> T:
        """Resolve a registered name or a ``module:Attr`` path."""
        self._load_entry_points()
        if name not in self._entries:
            if ":" in name:
                obj: T = import_target(name, self.kind)
                self._check_base(name, obj)
                return obj
            raise CuratorError(self.unknown_message(name))
        target = self._entries[name]
        if isinstance(target, str):
            resolved: T = import_target(target, f"{self.kind} {name!r}")
            self._check_base(name, resolved)
            self._entries[name] = resolved
            return resolved
        return target

    def unknown_message(self, name: str) -> str:
        names = self.names()
        hint = did_you_mean(name, names, cutoff=0.5)
        return (
            f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}"
            f" — or give a 'package.module:Class' path"
        )
