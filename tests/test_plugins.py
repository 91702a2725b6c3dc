"""Third-party strategies: the example plugin package through its entry point and a module:Class path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from curator.data.example import Example
from curator.errors import StrategyError
from curator.strategy import SelectionContext, build_strategy, run_selection, strategies

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "curator-example-plugin"


def _pool():
    sols = {"one": "a", "three": "a\nb\nc", "five": "a\nb\nc\nd\ne", "two": "a\nb"}
    return [Example(id=i, question=f"q {i}", solution=s + "\n#### 1", answer="1") for i, s in sols.items()]


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """Install the example plugin the way pip does, minus the copy: a ``*.dist-info`` whose
    entry_points.txt is generated from the plugin's own pyproject, on sys.path next to its source."""
    import tomllib

    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist = tmp_path / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    lines = []
    for group, eps in meta["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in eps.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN))
    # a fresh view of the entry points (the registry reads them once per process)
    monkeypatch.setattr(strategies, "_entries", dict(strategies._entries))
    monkeypatch.setattr(strategies, "_entry_points_loaded", False)
    yield
    for mod in [m for m in sys.modules if m.startswith("curator_example_plugin")]:
        monkeypatch.delitem(sys.modules, mod)


def test_plugin_strategy_through_its_entry_point(installed_plugin):
    assert "most-steps" in strategies.names()
    s = build_strategy("most-steps")
    sel = run_selection(s, SelectionContext(pool=_pool()), 2)
    assert sel.ids == ["five", "three"] and sel.strategy == "most-steps"
    assert sel.scores == {"one": 1.0, "three": 3.0, "five": 5.0, "two": 2.0}
    capped = run_selection(build_strategy("most-steps", {"max_steps": 3}), SelectionContext(pool=_pool()), 1)
    assert capped.ids == ["three"]


def test_plugin_errors_name_the_plugin_strategy(installed_plugin):
    with pytest.raises(StrategyError, match="'most-steps' has no parameter 'max_step' .did you mean 'max_steps'"):
        build_strategy("most-steps", {"max_step": 3})
    with pytest.raises(StrategyError, match="'most-steps': parameter max_steps=-1 is invalid"):
        build_strategy("most-steps", {"max_steps": -1})
    with pytest.raises(StrategyError, match="Did you mean 'most-steps'"):
        build_strategy("most-step")


def test_curate_strategies_lists_the_plugin(installed_plugin):
    from curator.cli.strategies import strategies as cmd

    out = CliRunner().invoke(cmd, []).output
    assert "most-steps  —  candidates with the most reasoning steps in their reference solution first" in out
    assert "parameters: max_steps=0" in out


def test_plugin_strategy_through_a_module_class_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    s = build_strategy("curator_example_plugin.steps:MostSteps", {"max_steps": 2})
    assert run_selection(s, SelectionContext(pool=_pool(), rng=np.random.default_rng(0)), 1).ids == ["two"]


def test_docs_show_the_tested_plugin_code():
    doc = (ROOT / "docs" / "STRATEGIES.md").read_text()
    assert (PLUGIN / "curator_example_plugin" / "steps.py").read_text().strip() in doc
    assert '[project.entry-points."curator.strategies"]' in doc
