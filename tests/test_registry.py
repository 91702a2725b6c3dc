"""The registry: one owner per name, clashes name both sources, entry points checked the same way."""

from __future__ import annotations

import sys

import pytest

from curator.errors import CuratorError
from curator.registry import Registry, target_path


class Alpha:
    pass


class Beta:
    pass


def _fake_distribution(root, dist_name: str, group: str, entries: dict[str, str]) -> None:
    """A ``*.dist-info`` with entry points, as pip writes it (no code needed to read the entry points)."""
    d = root / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    lines = [f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    (d / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_target_path():
    assert target_path(Alpha) == f"{__name__}:Alpha"
    assert target_path("pkg.mod:Cls") == "pkg.mod:Cls"
    assert target_path(object()) is None


def test_second_registration_of_a_name_is_an_error_naming_both():
    reg: Registry[type] = Registry("widget")
    reg.register("a", "builtin.widgets:Alpha")
    with pytest.raises(
        CuratorError,
        match=r"widget 'a' is registered twice: by 'builtin.widgets:Alpha' and by "
        rf"'{__name__}:Beta'",
    ):
        reg.register("a")(Beta)
    with pytest.raises(CuratorError, match=r"by 'builtin.widgets:Alpha' and by 'plugin.mod:Other'"):
        reg.register("a", "plugin.mod:Other")
    assert reg.names() == ["a"] and reg._entries["a"] == "builtin.widgets:Alpha"  # the first owner stays


def test_instances_clash_unless_identical():
    reg: Registry[object] = Registry("preset")
    one, two = object(), object()
    reg.register("x", one)
    reg.register("x", one)  # the very same object: not a clash
    with pytest.raises(CuratorError, match="preset 'x' is registered twice"):
        reg.register("x", two)
    assert reg.get("x") is one


def test_the_same_target_again_is_not_a_clash():
    reg: Registry[type] = Registry("widget")
    reg.register("a", f"{__name__}:Alpha")  # lazy, as the built-in tables do
    reg.register("a")(Alpha)  # then the class itself, e.g. its module's decorator on import
    assert reg.get("a") is Alpha
    reg.register("a", f"{__name__}:Alpha")  # after resolving, the lazy path again
    reg.register("a")(Alpha)
    assert reg.get("a") is Alpha


def test_a_plugin_cannot_replace_a_builtin_through_its_entry_point(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "evil-plugin", "curator.test_widgets", {"a": "evil.mod:Alpha"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("widget", entry_point_group="curator.test_widgets")
    reg.register("a", "builtin.widgets:Alpha")
    with pytest.raises(CuratorError) as err:
        reg.names()
    msg = str(err.value)
    assert (
        "widget 'a' is registered twice: by 'builtin.widgets:Alpha' and by the package 'evil-plugin' "
        "(entry point a = evil.mod:Alpha)" in msg
    )
    assert "uninstall" in msg


def test_two_plugins_with_the_same_name(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "plugin-one", "curator.test_widgets2", {"w": "one.mod:W", "only-one": "one.mod:X"})
    _fake_distribution(tmp_path, "plugin-two", "curator.test_widgets2", {"w": "two.mod:W"})
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[type] = Registry("widget", entry_point_group="curator.test_widgets2")
    with pytest.raises(CuratorError) as err:
        reg.names()
    msg = str(err.value)
    assert "widget 'w' is registered twice" in msg
    assert "the package 'plugin-one' (entry point w = one.mod:W)" in msg
    assert "the package 'plugin-two' (entry point w = two.mod:W)" in msg


def test_builtin_strategy_name_taken_by_a_plugin(tmp_path, monkeypatch):
    # the case: a plugin strategy called `iid` used to replace the built-in silently
    from curator.strategy import strategies

    _fake_distribution(tmp_path, "my-strategies", "curator.strategies", {"iid": "my_strategies:MyIID"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(strategies, "_entries", dict(strategies._entries))
    monkeypatch.setattr(strategies, "_sources", dict(strategies._sources))
    monkeypatch.setattr(strategies, "_entry_points_loaded", False)
    with pytest.raises(
        CuratorError,
        match=r"strategy 'iid' is registered twice: by 'strategies.iid:IID' and by "
        r"the package 'my-strategies' \(entry point iid = my_strategies:MyIID\)",
    ):
        strategies.get("iid")
    assert "my_strategies" not in sys.modules  # nothing of the plugin was imported to find the clash


def test_unknown_name_suggests_and_lists():
    reg: Registry[type] = Registry("widget")
    reg.register("alpha", Alpha)
    reg.register("beta", Beta)
    with pytest.raises(CuratorError, match=r"unknown widget 'alpah'. Did you mean 'alpha'\? Available: alpha, beta"):
        reg.get("alpah")
    assert reg.get(f"{__name__}:Beta") is Beta  # a module:Class path needs no registration


def test_base_class_is_checked_where_an_entry_is_added():
    reg: Registry[Alpha] = Registry("widget", base=Alpha)

    class Sub(Alpha):
        pass

    reg.register("sub", Sub)  # a subclass
    reg.register("inst", Alpha())  # an instance
    with pytest.raises(CuratorError, match=r"^widget 'b' must be a Alpha \(an instance or a subclass\), got "):
        reg.register("b", Beta)
    reg.register("lazy", f"{__name__}:Beta")  # a lazy target is checked when it is first resolved
    with pytest.raises(CuratorError, match="widget 'lazy' must be a Alpha"):
        reg.get("lazy")
    assert reg.names() == ["inst", "lazy", "sub"]


def test_ordered_registry_keeps_registration_order_and_reads_like_a_mapping():
    reg: Registry[int] = Registry("number", ordered=True)
    for name, v in (("two", 2), ("one", 1), ("three", 3)):
        reg.register(name, v)
    assert list(reg) == ["two", "one", "three"] and len(reg) == 3
    assert reg["one"] == 1 and reg.items() == [("two", 2), ("one", 1), ("three", 3)]
    with pytest.raises(CuratorError, match="unknown number 'thre'. Did you mean 'three'"):
        reg["thre"]


def test_every_pluggable_kind_is_a_registry():
    from curator.data.synthetic import SKILLS
    from curator.models.loading import ALIASES, ModelAlias
    from curator.models.moe import LAYOUTS, MoELayout
    from curator.probes.families import FAMILIES, PROBE_FAMILIES, ProbeFamily

    assert tuple(SKILLS) == ("shopping", "rates", "sharing", "comparison", "group_totals")  # order = seeded draws
    assert list(ALIASES) == ["tiny-random", "smollm2-135m-instruct", "organism"]
    assert list(LAYOUTS) == ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe"]
    assert LAYOUTS["mixtral"].router == "MixtralTopKRouter"
    assert FAMILIES == tuple(PROBE_FAMILIES) and FAMILIES[:2] == ("chosen", "rejected") and FAMILIES[-1] == "greedy"
    # refused before it is added: the global registries stay as they were
    for reg, base in ((ALIASES, ModelAlias), (LAYOUTS, MoELayout), (PROBE_FAMILIES, ProbeFamily), (SKILLS, None)):
        name = base.__name__ if base else "_Skill"
        with pytest.raises(CuratorError, match=f"'not-one' must be a {name}"):
            reg.register("not-one", object())
        assert "not-one" not in reg


def test_did_you_mean_is_the_one_suggestion():
    from curator.errors import closest, did_you_mean

    assert did_you_mean("trainig", ["training", "dynamics"]) == " Did you mean 'training'?"
    assert did_you_mean("layer", ("layers", "heads"), parens=True) == " (did you mean 'layers'?)"
    assert did_you_mean("zzz", ["training"]) == ""
    # the cutoff: 'promt' is 0.91 like 'prompt', 'qx' only 0.5 like 'qa'
    assert closest("promt", ["prompt", "answer"]) == "prompt"
    assert closest("qx", ["qa"]) is None and closest("qx", ["qa"], cutoff=0.5) == "qa"
