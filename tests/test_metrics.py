"""PreMemAcc and the other ledger metrics against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

from curator.dynamics import metrics as M
from curator.dynamics.ledger import Ledger
from curator.errors import ConfigError

IDS = ["A", "B", "C", "D"]
# k = 5 samples, 3 checkpoints (epochs 1, 2, 3)
N_CORRECT = np.array(
    [
        [1, 3, 2],  # A: running max .6 then memorized at 3 with Acc .4 -> min picks .4
        [4, 5, 5],  # B: memorized from checkpoint 1 (1.1 <= 1.105) -> masked to 0
        [5, 1, 4],  # C: running max 1 but PreMemAcc follows Acc down (min)
        [0, 2, 5],
    ]
)  # D: running max .4, final Acc 1 -> .4
PPL = np.array([[2.0, 1.5, 1.05], [1.1, 1.05, 1.01], [3.0, 2.0, 1.2], [3.0, 1.5, 1.0]])


def full_ledger(**kw):
    return Ledger.from_arrays(IDS, N_CORRECT, k=5, perplexity=PPL, p=1.105, steps=[10, 20, 30], **kw)


def test_premem_acc_hand_computed():
    pm = M.premem_acc(full_ledger())
    expected = pd.DataFrame([[0.2, 0.6, 0.4], [0, 0, 0], [1, 0.2, 0.8], [0, 0.4, 0.4]], index=IDS, columns=[1, 2, 3])
    np.testing.assert_allclose(pm.to_numpy(), expected.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(M.dataset_premem(full_ledger()).to_numpy(), [0.3, 0.3, 0.4], atol=1e-12)


def test_masked_acc_and_accuracy():
    led = full_ledger()
    np.testing.assert_allclose(M.accuracy(led).to_numpy(), N_CORRECT / 5)
    np.testing.assert_allclose(
        M.masked_acc(led).to_numpy(), [[0.2, 0.6, 0], [0, 0, 0], [1, 0.2, 0.8], [0, 0.4, 0]], atol=1e-12
    )


def test_p_is_an_argument_sweep_without_remeasuring():
    led = full_ledger()
    # p = 1.08: B is no longer memorized at checkpoint 1 (1.1 > 1.08): running max .8, Acc 1 -> .8
    pm = M.premem_acc(led, p=1.08)
    np.testing.assert_allclose(pm.loc["B"].to_numpy(), [0.8, 0.8, 0.8])
    # p = 1.3: C memorized at 3 (1.2), its running max is still 1 -> min(1, .8) = .8
    np.testing.assert_allclose(M.premem_acc(led, p=1.3).loc["C"].to_numpy(), [1, 0.2, 0.8])
    with pytest.raises(ConfigError, match="p must be > 1"):
        M.premem_acc(led, p=1.0)


def test_train_acc_fraction_memorized_epochs():
    led = full_ledger()
    np.testing.assert_allclose(M.train_accuracy(led).to_numpy(), [0.5, 0.55, 0.8])
    np.testing.assert_allclose(M.fraction_memorized(led).to_numpy(), [0.25, 0.25, 0.75])
    me = M.memorization_epoch(led)
    assert me["A"] == 3 and me["B"] == 1 and math.isnan(me["C"]) and me["D"] == 3
    fc = M.first_correct_epoch(led)
    assert fc.tolist() == [1, 1, 1, 2]
    assert M.first_correct_epoch(led, "majority").tolist() == [2, 1, 1, 3]
    assert M.forgetting_events(led).tolist() == [1, 0, 1, 0]
    assert M.forgetting_events(led, "any").tolist() == [0, 0, 0, 0]


def test_cartography():
    car = M.cartography(full_ledger())
    prob = 1 / PPL
    np.testing.assert_allclose(car["confidence"].to_numpy(), prob.mean(axis=1))
    np.testing.assert_allclose(car["variability"].to_numpy(), prob.std(axis=1))
    np.testing.assert_allclose(car["correctness"].to_numpy(), (N_CORRECT / 5).mean(axis=1))


def test_summary_table():
    s = M.summary(full_ledger())
    assert s.index.tolist() == [1, 2, 3]
    assert s["step"].tolist() == [10, 20, 30]
    np.testing.assert_allclose(s["premem_acc"], [0.3, 0.3, 0.4])
    np.testing.assert_allclose(s["premem_acc_lo"], s["premem_acc_hi"])
    np.testing.assert_allclose(s["train_acc"], [0.5, 0.55, 0.8])
    np.testing.assert_allclose(s["mean_perplexity"], PPL.mean(axis=0))
    assert s["samples_drawn"].tolist() == [20, 20, 20] and s["cells_skipped"].tolist() == [0, 0, 0]


def lazy_ledger():
    """B and C of the full ledger as the lazy tracker (k=5, p=1.105) records them."""
    rows = []

    def row(eid, cp, s, c, ppl, reason):
        rows.append(
            dict(
                example_id=eid,
                checkpoint=cp,
                step=cp,
                epoch=float(cp),
                n_samples=s,
                n_correct=c,
                target_nll=math.log(ppl),
                target_tokens=7,
                skip_reason=reason,
            )
        )

    # B: memorized everywhere, running max 0 -> nothing sampled; final value determined (0)
    row("B", 1, 0, 0, 1.1, "memorized")
    row("B", 2, 0, 0, 1.05, "memorized")
    row("B", 3, 0, 0, 1.01, "determined")
    # C: 5/5 at checkpoint 1 -> running max 1 -> checkpoint 2 skipped; final not memorized -> all 5
    row("C", 1, 5, 5, 3.0, None)
    row("C", 2, 0, 0, 2.0, "max-reached")
    row("C", 3, 5, 4, 1.2, None)
    # D: final memorized with running max 2/5; stop once 2 correct are seen (4 drawn, 2 correct)
    row("D", 1, 5, 0, 3.0, None)
    row("D", 2, 5, 2, 1.5, None)
    row("D", 3, 4, 2, 1.0, "determined")
    return Ledger.from_rows(rows, p=1.105, k=5, lazy=True)


def test_lazy_cells_final_exact_intermediate_bounded():
    led = lazy_ledger()
    pm = M.premem_acc(led)
    # the final checkpoint equals the full-tracking values of B, C and D
    np.testing.assert_allclose(pm[3].to_numpy(), [0, 0.8, 0.4])
    # B's intermediate values are determined too (running max 0); C's checkpoint 2 is not
    assert pm.loc["B"].tolist() == [0, 0, 0]
    assert math.isnan(pm.loc["C", 2])
    lo, hi = M.premem_bounds(led)
    assert lo.loc["C", 2] == 0 and hi.loc["C", 2] == 1
    s = M.summary(led)
    assert math.isnan(s.loc[2, "premem_acc"]) and s.loc[3, "premem_acc"] == pytest.approx(1.2 / 3)
    assert s.loc[3, "cells_skipped"] == 2 and s.loc[1, "samples_drawn"] == 10
    assert math.isnan(s.loc[2, "train_acc"])
    # D at 3: 2 correct of 4 drawn -> Acc in [.4, .6]
    alo, ahi = M.accuracy_bounds(led)
    assert alo.loc["D", 3] == pytest.approx(0.4) and ahi.loc["D", 3] == pytest.approx(0.6)
    # forgetting and first-correct need cells that lazy tracking skipped
    assert math.isnan(M.forgetting_events(led)["C"])
    assert M.first_correct_epoch(led)["C"] == 1 and math.isnan(M.first_correct_epoch(led)["B"])


def test_lazy_ledger_with_other_p_is_undetermined_not_wrong():
    led = lazy_ledger()
    # at p = 1.08 B was not memorized at checkpoint 1, but it was never sampled: unknown -> NaN
    assert math.isnan(M.premem_acc(led, p=1.08).loc["B", 3])
    assert math.isnan(M.dataset_premem(led, p=1.08)[3])


def test_no_p_anywhere():
    led = Ledger.from_arrays(IDS, N_CORRECT, k=5, perplexity=PPL)
    led.meta.pop("p")
    with pytest.raises(ConfigError, match="pass p"):
        M.premem_acc(led)
    assert M.dataset_premem(led, p=1.105).tolist() == pytest.approx([0.3, 0.3, 0.4])
