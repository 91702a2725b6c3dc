"""Data-efficiency math and the compare table, on hand-built curves."""

import json

import numpy as np
import pytest
from launching import tiny_recipe

from curator.tracking.compare import (
    Curve,
    compare_curves,
    compare_run_dir,
    efficiency_interval,
    examples_to_reach,
    mean_curve,
)


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
    assert examples_to_reach(n, acc, 0.9).bound == ">"  # never reached: lower bound
    lo = examples_to_reach(n, acc, 0.1)
    assert lo.bound == "<=" and lo.examples == 10.0  # reached at the first point already


def test_mean_curve_over_seeds():
    a = Curve("iid", 0, np.array([10, 20.0]), np.array([0.2, 0.4]))
    b = Curve("iid", 1, np.array([10, 20.0]), np.array([0.4, 0.6]))
    grid, mean, lo, hi = mean_curve([a, b])
    assert grid.tolist() == [10, 20] and mean.tolist() == pytest.approx([0.3, 0.5])
    # 95% t interval of the mean: sd 0.1414, se 0.1, t(0.975, 1 df) = 12.706
    assert lo.tolist() == pytest.approx([0.3 - 1.27062, 0.5 - 1.27062], abs=1e-4)
    assert hi.tolist() == pytest.approx([0.3 + 1.27062, 0.5 + 1.27062], abs=1e-4)
    one = mean_curve([a])
    assert one[2].tolist() == one[3].tolist() == [0.2, 0.4]  # one seed: no interval


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


BASE_N = np.array([10, 20, 40.0])


def _seeds(label, n, accs):
    return [Curve(label, s, np.asarray(n, float), np.asarray(a, float)) for s, a in enumerate(accs)]


def test_efficiency_interval_planted_win_is_beyond_noise():
    base = _seeds("iid", BASE_N, [[0.2, 0.4, 0.6]] * 5)
    # every seed reaches 0.5 with 20 examples; iid needs 30 for 0.5 -> 1.5x, identical over seeds
    smart = _seeds("smart", [10, 20], [[0.2, 0.5]] * 5)
    e = efficiency_interval(smart, base)
    assert (e.value, e.lo, e.hi, e.bound, e.seeds) == (
        pytest.approx(1.5),
        pytest.approx(1.5),
        pytest.approx(1.5),
        "",
        5,
    )
    assert e.acc_diff == pytest.approx(0.1) and e.verdict == "yes: better"


def test_a_flat_baseline_censors_the_ratio_but_not_the_accuracy_verdict():
    flat = _seeds("iid", [16, 32], [[0.16, 0.155]] * 5)  # finetuning more does not help i.i.d.
    up = _seeds("loss", [16, 32], [[0.16, 0.18 + d] for d in (0.0, 0.01, -0.01, 0.02, -0.02)])
    e = efficiency_interval(up, flat)
    assert e.bound == ">" and e.censored == 1.0  # iid never reaches 0.18: only a lower bound
    assert e.acc_diff == pytest.approx(0.025) and e.diff_lo > 0 and e.verdict == "yes: better"


def test_efficiency_interval_noise_is_not_called_a_difference():
    base = _seeds("iid", BASE_N, [[0.2, 0.4, 0.6]] * 5)
    same = _seeds("same", [10, 20], [[0.2, 0.4 + d] for d in (-0.1, 0.1, -0.05, 0.05, 0.0)])
    e = efficiency_interval(same, base)
    assert e.value == pytest.approx(1.0) and e.acc_diff == pytest.approx(0.0, abs=1e-12)
    assert e.lo < 1.0 < e.hi and e.diff_lo < 0 < e.diff_hi and e.verdict == "no"
    worse = _seeds("worse", [10, 20], [[0.2, 0.3]] * 5)  # iid reaches 0.3 at 15 -> 0.75x
    w = efficiency_interval(worse, base)
    assert w.value == pytest.approx(0.75) and w.acc_diff == pytest.approx(-0.1) and w.verdict == "yes: worse"


def test_efficiency_interval_pairs_seeds_and_says_when_there_is_one():
    base = _seeds("iid", BASE_N, [[0.2, 0.4, 0.6]] * 2)
    one = [Curve("x", 1, np.array([10, 20.0]), np.array([0.2, 0.5]))]
    e = efficiency_interval(one, base)  # only seed 1 is shared
    assert e.seeds == 1 and e.verdict == "one seed: no interval"
    with pytest.raises(Exception, match="share no seed"):
        efficiency_interval([Curve("x", 7, np.array([10.0]), np.array([0.2]))], base)


def _fake_run(root, seed, label, points):
    d = root / f"seed-{seed}"
    (d / label).mkdir(parents=True, exist_ok=True)
    (d / "recipe.yaml").write_text(f"seed: {seed}\n")
    (d / label / "run.json").write_text("{}")
    for r, (n, acc) in enumerate(points):
        rd = d / label / f"round-{r:02d}"
        rd.mkdir()
        (rd / "metrics.json").write_text(json.dumps({"n_train": n, "test_accuracy": acc}))
        (rd / "DONE").write_text("")


def test_compare_reads_every_seed_of_a_multi_seed_run_dir(tmp_path):
    for s, bump in ((0, 0.0), (1, 0.02), (2, -0.02)):
        _fake_run(tmp_path, s, "iid", [(10, 0.2 + bump), (20, 0.4 + bump), (40, 0.6 + bump)])
        _fake_run(tmp_path, s, "smart", [(10, 0.2 + bump), (20, 0.5 + bump)])
    res = compare_run_dir(tmp_path)
    assert "mean over 3 seeds [95% interval of the mean]" in res.table
    assert res.intervals["smart"].seeds == 3 and res.intervals["smart"].verdict == "yes: better"
    assert "| smart | 3 | 1.50× |" in res.table and "beyond noise" in res.table
    assert res.png.exists()


def test_one_seed_is_labelled_a_smoke_test(tmp_path):
    iid = Curve("iid", 0, BASE_N, np.array([0.2, 0.4, 0.6]))
    res = compare_curves([iid, Curve("x", 0, np.array([10, 20.0]), np.array([0.2, 0.5]))])
    assert "one seed: a smoke test" in res.table and "one seed: no interval" in res.table


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_run_seeds_runs_each_seed_in_its_own_dir_and_resumes(tmp_path):
    """Two seeds of a tiny recipe end to end; a rerun finds every round done and trains nothing."""
    from curator.recipes import recipe_from_dict
    from curator.seeds import run_seeds, seed_recipe

    r = recipe_from_dict(
        tiny_recipe(
            name="tiny-seeds",
            seeds=[3, 4],
            output_dir=str(tmp_path / "run"),
            strategies=[{"name": "iid"}, {"name": "learnability", "params": {"n": 2}}],
        )
    )
    s = seed_recipe(r, 4)
    assert (s.seed, s.seeds, s.output_dir) == (4, None, str(tmp_path / "run" / "seed-4"))
    out = run_seeds(r, progress=False, echo=lambda *_: None)
    seeds_ids = [json.loads((tmp_path / "run" / f"seed-{k}" / "seed_ids.json").read_text()) for k in (3, 4)]
    assert seeds_ids[0] != seeds_ids[1]  # each seed draws its own seed set
    assert "mean over 2 seeds" in out.compare_table and out.curves_png.exists()
    done = sorted(tmp_path.glob("run/seed-*/*/round-*/DONE"))
    assert len(done) == 2 * 2 * 2
    stamps = [p.stat().st_mtime_ns for p in done]
    run_seeds(r, progress=False, echo=lambda *_: None)
    assert [p.stat().st_mtime_ns for p in done] == stamps
