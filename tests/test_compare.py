"""Data-efficiency math and the compare table, on hand-built curves."""

import numpy as np
import pytest

from curator.tracking.compare import Curve, compare_curves, examples_to_reach, mean_curve


def test_examples_to_reach_interpolates_linearly():
    n = np.array([10, 20, 40.0])
    acc = np.array([0.2, 0.4, 0.6])
    # 0.5 lies halfway between (20, 0.4) and (40, 0.6)
    r = examples_to_reach(n, acc, 0.5)
    assert r.examples == pytest.approx(30.0) and r.bound == ""
    assert examples_to_reach(n, acc, 0.4).examples == 20.0


def test_examples_to_reach_bounds():
    n = np.array([10, 20.0])
    acc = np.array([0.3, 0.5])
    assert examples_to_reach(n, acc, 0.9).bound == ">"     # never reached: lower bound
    lo = examples_to_reach(n, acc, 0.1)
    assert lo.bound == "<=" and lo.examples == 10.0        # reached at the first point already


def test_mean_curve_over_seeds():
    a = Curve("iid", 0, np.array([10, 20.0]), np.array([0.2, 0.4]))
    b = Curve("iid", 1, np.array([10, 20.0]), np.array([0.4, 0.6]))
    grid, mean, lo, hi = mean_curve([a, b])
    assert grid.tolist() == [10, 20] and mean.tolist() == pytest.approx([0.3, 0.5])
    assert lo.tolist() == [0.2, 0.4] and hi.tolist() == [0.4, 0.6]


def test_table_and_efficiency(tmp_path):
    iid = Curve("iid", 0, np.array([10, 20, 30.0]), np.array([0.2, 0.3, 0.4]))
    smart = Curve("premem-threshold", 0, np.array([10, 20, 30.0]), np.array([0.2, 0.35, 0.45]))
    res = compare_curves([iid, smart], baseline="iid", out_dir=tmp_path)
    # smart reaches 0.35 at 20; iid reaches 0.35 at 25 -> 1.25x at budget 20; 0.45 never -> >1.00x at 30
    assert "| 20 | 1.25× |" in res.table
    assert res.efficiency["premem-threshold"].bound == ">"
    assert res.efficiency["iid"].examples == pytest.approx(30.0)
    assert res.png.exists() and res.png.stat().st_size > 1000
    assert (tmp_path / "compare.md").read_text() == res.table
