"""The organism's regime (issue 19): `curate validate`'s note on a non-default organism, the
regime-map driver's bookkeeping, and (slow) properties a and b on the default organism."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from curator.recipes import load_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]


def _regime_map():
    spec = importlib.util.spec_from_file_location("regime_map", ROOT / "bench" / "regime_map.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["regime_map"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_validate_notes_an_organism_that_is_not_the_benchmarked_default():
    assert not [n for n in validate_recipe(load_recipe("demo")) if "organism" in n]
    same = load_recipe("demo", ["model.name=organism?seed=0"])  # the default's own value: no note
    assert not [n for n in validate_recipe(same) if "organism" in n]
    other = load_recipe("demo", ["model.name=organism?hidden=64&layers=2"])
    notes = [n for n in validate_recipe(other) if "organism" in n]
    assert notes == [
        "model.name: this organism (hidden=64, layers=2) is not the benchmarked default; whether "
        "finetuning helps and training sets get memorized was measured on the default only "
        "(docs/ORGANISM.md, regime map)"
    ]


def test_regime_map_rows_resume_by_cell_and_tabulate(tmp_path):
    rm = _regime_map()
    out = tmp_path / "map.jsonl"
    base = {"kind": "base", "organism": "organism", "test_acc": 0.5, "seconds": 1.0}
    cell = {
        "kind": "cell",
        "organism": "organism",
        "lr": 0.001,
        "epochs": 4,
        "n": 16,
        "seed": 0,
        "batch_size": 4,
        "scheduler": "constant",
        "test_acc": 0.25,
        "train_acc": 0.75,
        "memorized": 0.5,
        "premem": 0.5,
        "gap": 0.25,
        "seconds": 3.0,
    }
    rm.append_row(out, base)
    rm.append_row(out, cell)
    rm.append_row(out, {**cell, "seed": 1, "test_acc": 0.35})
    rows = rm.read_rows(out)
    assert {rm.cell_key(r) for r in rows} == {
        ("base", "organism"),
        ("cell", "organism", 0.001, 4, 16, 0, 4, "constant"),
        ("cell", "organism", 0.001, 4, 16, 1, 4, "constant"),
    }
    last = rm.table(rows).splitlines()[-1]
    assert last == (
        "| organism | 0.500 | 0.001 | 4 | 4 | constant | 16 | 2 | 0.300 (0.25-0.35) | 0.750 (0.75-0.75) | "
        "0.500 (0.50-0.50) | 0.500 (0.50-0.50) | 0.250 (0.25-0.25) | 3 |"
    )


@pytest.mark.slow
def test_the_default_organism_is_in_the_regime_the_benchmark_needs():
    """Properties a and b of issue 19 at reduced size (one seed, 16 and 432 examples), with the
    benchmark's finetuning settings read from recipes/organism-kang.yaml. Thresholds are
    hand-checked against bench/results/regime/memo.jsonl (seed 0, 12 epochs): base 0.464;
    16 examples 0.184; 432 examples 0.506, train accuracy 0.86, 76% memorized; 16 examples at
    lr 2e-3: train accuracy 0.89, 69% memorized. About 2 minutes on 2 cores once the organism is
    cached."""
    import argparse

    import torch

    rm = _regime_map()
    recipe = load_recipe("organism-kang")
    t = recipe.training
    args = argparse.Namespace(batch_size=t.batch_size, scheduler=t.lr_scheduler)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the map's setting
    try:
        org = rm.Organism("organism", recipe, test_n=500)
        base = org.skill_accuracy(org.base.model, recipe.seed)["all"]
        draw = rm.training_set(recipe, 432, seed=0)
        small = rm.run_cell(org, draw[:16], t.learning_rate, t.epochs, 0, args)
        large = rm.run_cell(org, draw, t.learning_rate, t.epochs, 0, args)
        high = rm.run_cell(org, draw[:16], 2 * t.learning_rate, t.epochs, 0, args)
    finally:
        torch.set_num_threads(threads)
    # the organism itself has not moved: 0.464 where the map was made, 0.452 on a later machine
    # with the same code (docs/ORGANISM.md, "Reproducibility across machines"); 0.03 ~ 1.4 SE
    assert abs(base - 0.464) < 0.03
    # a: finetuning helps at the largest set, and the curve rises by >= 0.15
    assert large["test_acc"] >= base + 0.025, (base, large)
    assert large["test_acc"] - small["test_acc"] >= 0.15, (small, large)
    # b: a high-rate configuration fits its training set; the benchmark setting memorizes >= 30%
    assert high["train_acc"] >= 0.8 and high["memorized"] >= 0.5, high
    assert large["train_acc"] >= 0.75 and large["memorized"] >= 0.5, large
