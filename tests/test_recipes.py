"""Recipes: parsing, validation (all errors at once), overrides, and every shipped recipe."""

from pathlib import Path

import pytest

from curator.errors import ConfigError, CuratorError
from curator.recipes import RECIPES_DIR, apply_overrides, load_recipe, recipe_from_dict, validate_recipe

SHIPPED = sorted(RECIPES_DIR.glob("*.yaml"))


def test_defaults_build():
    r = recipe_from_dict({})
    assert r.dynamics.samples == 5 and r.dynamics.p == 1.105
    assert r.format.prompt == "{question}\nAnswer:" and r.format.target == " {solution}\nDone."
    assert [s.name for s in r.strategies] == ["iid"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_recipe_validates(path):
    r = load_recipe(path)
    validate_recipe(r)
    assert r.name == path.stem or r.name


def test_demo_is_the_default():
    assert load_recipe(None).name == "demo"


def test_unknown_keys_get_suggestions_and_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"dynamics": {"sampels": 3, "p": 0.9}, "loop": {"rounds": "three"}, "trainig": {}})
    msg = str(e.value)
    assert "dynamics.sampels: unknown key. Did you mean 'samples'?" in msg
    assert "trainig: unknown key. Did you mean 'training'?" in msg
    assert "loop.rounds: must be an integer, got 'three'" in msg
    assert len(e.value.problems) == 3  # p is checked once the section's types are right


def test_cross_field_rules():
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"dynamics": {"p": 1.0, "samples": 0}})
    assert any("dynamics.p must be > 1" in p for p in e.value.problems)
    assert any("dynamics.samples must be >= 1" in p for p in e.value.problems)


def test_overrides_take_precedence_and_parse_yaml_values():
    data = {"loop": {"rounds": 3}, "strategies": [{"name": "iid"}, {"name": "loss"}]}
    out = apply_overrides(data, ["loop.rounds=5", "dynamics.lazy=false", "strategies.1.params.x=0.5"])
    assert out["loop"]["rounds"] == 5 and out["dynamics"]["lazy"] is False
    assert out["strategies"][1]["params"] == {"x": 0.5}
    assert data["loop"]["rounds"] == 3  # the input is not modified


def test_override_errors():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["loop.rounds"])
    with pytest.raises(ConfigError, match="no item 4"):
        apply_overrides({"strategies": [{"name": "iid"}]}, ["strategies.4.name=x"])


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nloop:\n  rounds: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_recipe(p)


def test_unknown_recipe_name_suggests():
    with pytest.raises(CuratorError, match="Did you mean 'demo'"):
        load_recipe("dmeo")


def test_budget_schedule():
    r = recipe_from_dict({"loop": {"rounds": 3, "budget": [8, 16]}})
    assert [r.loop.budget_for(i) for i in range(2)] == [8, 16]
    with pytest.raises(ConfigError, match="3 rounds need 2"):
        recipe_from_dict({"loop": {"rounds": 3, "budget": [8]}})


def test_duplicate_strategy_runs_need_labels():
    with pytest.raises(ConfigError, match="give each a distinct 'label'"):
        recipe_from_dict({"strategies": [{"name": "iid"}, {"name": "iid"}]})
    r = recipe_from_dict({"strategies": [{"name": "iid"}, {"name": "iid", "label": "iid-2"}]})
    assert [s.run_name for s in r.strategies] == ["iid", "iid-2"]


def test_validate_checks_strategy_names_and_params():
    r = recipe_from_dict(
        {"strategies": [{"name": "premem-treshold"}, {"name": "iid", "params": {"bogus": 1}, "label": "x"}]}
    )
    with pytest.raises(ConfigError) as e:
        validate_recipe(r)
    msg = str(e.value)
    assert "Did you mean 'premem-threshold'" in msg
    assert "bogus" in msg


def test_resolved_recipe_round_trips():
    r = load_recipe(None, ["loop.rounds=2"])
    again = recipe_from_dict(__import__("yaml").safe_load(r.to_yaml()))
    assert again == r


def test_docs_reference_is_in_sync():
    from curator.recipes import reference_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "RECIPES.md"
    assert doc.read_text() == reference_markdown(), "regenerate: python -m curator.recipes > docs/RECIPES.md"


def test_validate_notes_a_generator_pool_smaller_than_what_the_rounds_add():
    from curator.recipes import load_recipe, validate_recipe

    assert not [n for n in validate_recipe(load_recipe("organism-kang")) if "generator_pool_size" in n]
    small = load_recipe("organism-kang", ["data.generator_pool_size=300"])
    # 16-example seed set, budgets 2x, 6x, 18x: 32 + 96 + 288 = 416 examples added over 3 selections
    assert [n for n in validate_recipe(small) if "generator_pool_size" in n] == [
        "data.generator_pool_size: 300 fresh draws, but the rounds add 416 examples: `iid` runs out "
        "and trains on fewer than the other strategies; set it to >= 416"
    ]
    no_iid = load_recipe("organism-kang", ["data.generator_pool_size=300", "strategies=[{name: loss}]"])
    assert not [n for n in validate_recipe(no_iid) if "generator_pool_size" in n]
