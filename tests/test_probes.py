"""Response-family probes, DPO and the squeezing direction (curator.probes, curator.training.dpo)."""

import json
import math
import os
import random

import numpy as np
import pytest

from curator.data.format import PromptFormat, encode_pair
from curator.errors import ConfigError, DataError
from curator.probes.families import (
    FAMILIES,
    build_probe_set,
    load_rephraser,
    shuffle_words,
)
from curator.probes.preferences import (
    PreferenceRow,
    corrupt_last_step,
    load_preferences,
    rows_to_preferences,
    synthetic_preferences,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TRACE = (
    "5 + 17 = 22.\nThe total number of tickets is 22 + 19 = 41 tickets.\n"
    "The number of tickets left: 41 - 24 = 17 tickets.\n#### 17"
)
SMALL = "synthetic:easy?n=8&seed=0&max_steps=2&max_operand=10"


def row(i, **kw):
    return PreferenceRow(id=f"r{i}", question=f"Q{i}?", chosen=f"good {i} answer", rejected=f"bad {i} answer", **kw)


# -- preference rows -------------------------------------------------------------------------------


def test_corrupt_last_step_changes_the_last_result_and_the_answer_only():
    assert corrupt_last_step(TRACE, 19) == (
        "5 + 17 = 22.\nThe total number of tickets is 22 + 19 = 41 tickets.\n"
        "The number of tickets left: 41 - 24 = 19 tickets.\n#### 19"
    )
    # an operand equal to the answer (left of '=') is kept; 170 is not 17
    assert (
        corrupt_last_step("x: 17 - 0 = 17, so 17 left of 170.\n#### 17", 15)
        == "x: 17 - 0 = 15, so 15 left of 170.\n#### 15"
    )
    with pytest.raises(DataError, match="no '#### answer' line"):
        corrupt_last_step("1 + 1 = 2.", 3)


def test_synthetic_preferences_are_one_wrong_step_and_seeded():
    from curator.data.loaders import load_examples

    exs = load_examples(SMALL)
    rows = synthetic_preferences(exs, seed=0)
    assert [r.id for r in rows] == [e.id for e in exs]
    for ex, r in zip(exs, rows):
        assert r.chosen == ex.solution and r.rejected != r.chosen
        wrong = int(r.rejected.rsplit("#### ", 1)[1])
        assert wrong != int(ex.answer) and abs(wrong - int(ex.answer)) <= 9 and wrong >= 0
        # only the last arithmetic line and the answer line differ
        diff = [a != b for a, b in zip(r.chosen.split("\n"), r.rejected.split("\n"))]
        assert diff[:-2] == [False] * (len(diff) - 2) and diff[-2:] == [True, True]
        assert r.chosen_rephrase in ex.meta["traces"] and r.chosen_rephrase != r.chosen
        assert r.rejected_rephrase.endswith(f"#### {wrong}")
    assert synthetic_preferences(exs, seed=0) == rows
    assert synthetic_preferences(exs, seed=1) != rows


# -- families --------------------------------------------------------------------------------------


def test_families_hand_worked():
    a, b = row(0), row(1)
    test = [PreferenceRow(id="t", question="T?", chosen="test answer", rejected="x")]
    ps = build_probe_set([a, b], [a, b], test, seed=3, unrelated=["one two"], greedy=["g0", "g1"])
    r = ps.responses
    assert r["chosen"] == ["good 0 answer", "good 1 answer"]
    assert r["rejected"] == ["bad 0 answer", "bad 1 answer"]
    assert r["other_chosen"] == ["good 1 answer", "good 0 answer"]  # the only other training row
    assert r["test_chosen"] == ["test answer", "test answer"]
    assert r["unrelated"] == ["one two", "one two"]
    assert r["unrelated_shuffled"] == ["two one", "two one"]  # the one order that differs
    for orig, shuf in zip(r["chosen"], r["chosen_shuffled"]):
        assert sorted(shuf.split()) == sorted(orig.split()) and shuf != orig
    assert r["greedy"] == ["g0", "g1"]
    # no rephrase columns and no rephrasing model: those two families are left out, with a note
    assert "chosen_rephrase" not in r and "rejected_rephrase" not in r
    assert any("chosen_rephrase left out: probe row 0 (id r0)" in n for n in ps.notes)
    assert ps.families == [f for f in FAMILIES if f not in ("chosen_rephrase", "rejected_rephrase")]


def test_family_picks_are_seeded_per_probe():
    train = [row(i) for i in range(6)]
    one = build_probe_set(train[:3], train, seed=7)
    assert one.responses == build_probe_set(train[:3], train, seed=7).responses
    # adding a probe leaves the others' picks unchanged
    more = build_probe_set(train[:4], train, seed=7)
    for fam in one.responses:
        assert more.responses[fam][:3] == one.responses[fam]
    assert all(o != c for o, c in zip(one.responses["other_chosen"], one.responses["chosen"]))
    assert shuffle_words("a a a", random.Random(0)) == "a a a"


def test_rephrasings_from_columns_or_a_model():
    a = row(0, chosen_rephrase="fine 0", rejected_rephrase=None)
    b = row(1, chosen_rephrase="fine 1", rejected_rephrase="wrong 1")

    class Echo:  # a stand-in rephrasing sampler: upper-cases the response inside the prompt
        def __init__(self):
            self.calls = []

        def generate(self, prompts, n, params):
            self.calls.append(len(prompts))
            return [[" " + p.split("\n\n")[1].upper()] for p in prompts]

    echo = Echo()
    ps = build_probe_set([a, b], [a, b], rephraser=echo)
    assert ps.responses["chosen_rephrase"] == ["fine 0", "fine 1"]
    assert ps.responses["rejected_rephrase"] == ["BAD 0 ANSWER", "wrong 1"]  # only the missing one made
    assert echo.calls == [1]


def test_pairs_use_the_target_template_except_for_greedy():
    a, b = row(0), row(1)
    ps = build_probe_set([a], [a, b], unrelated=["x y"], greedy=[" g\nDone."])
    prompts, targets, keys = ps.pairs(PromptFormat())
    assert prompts[0] == "Q0?\nAnswer:" and targets[0] == " good 0 answer\nDone." and keys[0] == ("chosen", "r0")
    assert targets[keys.index(("greedy", "r0"))] == " g\nDone."


# -- log-probabilities -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from curator.models import load_model

    return load_model("tiny-random")


def test_scores_match_a_direct_forward_pass_and_the_sampler(tiny):
    import torch

    from curator.probes.scoring import score_targets
    from curator.sampling.hf import HFSampler

    prompts = ["Q0?\nAnswer:", "A much longer question here?\nAnswer:", "Q2?\nAnswer:"]
    targets = [" 1 + 2 = 3\nDone.", " x\nDone.", " a longer target with more tokens\nDone."]
    tok_lp, max_lp = score_targets(tiny.model, tiny.tokenizer, prompts, targets, batch_size=2)
    for p, t, lp, mx in zip(prompts, targets, tok_lp, max_lp):
        pi, ti = encode_pair(tiny.tokenizer, p, t)
        with torch.no_grad():
            logits = tiny.model(input_ids=torch.tensor([pi + ti])).logits[0].double()
        logp = logits.log_softmax(-1)[len(pi) - 1 : len(pi) + len(ti) - 1]
        np.testing.assert_allclose(lp, logp[torch.arange(len(ti)), torch.tensor(ti)].numpy(), atol=1e-4)
        np.testing.assert_allclose(mx, logp.max(-1).values.numpy(), atol=1e-4)
        assert np.all(mx >= lp - 1e-6)
    sampler = HFSampler(tiny.model, tiny.tokenizer)
    for a, b in zip(sampler.target_logprobs(prompts, targets), tok_lp):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(DataError, match="response 1 .* tokenizes to nothing"):
        score_targets(tiny.model, tiny.tokenizer, prompts[:2], [" a", ""])


def test_probe_logger_rows_and_table_roundtrip(tiny, tmp_path):
    from curator.probes.scoring import (
        PROBE_COLUMNS,
        ProbeLogger,
        family_curves,
        read_probe_table,
        score_targets,
        write_probe_table,
    )

    a, b = row(0), row(1)
    ps = build_probe_set([a, b], [a, b], unrelated=["x y z"])
    lg = ProbeLogger(ps, PromptFormat(), tiny.tokenizer, recipe="r")
    lg.log(tiny.model, stage="init", stage_index=0, step=0, stage_step=0, epoch=0.0)
    df = lg.table()
    assert list(df.columns) == list(PROBE_COLUMNS) and len(df) == len(ps.families) * 2
    prompts, targets, keys = ps.pairs(PromptFormat())
    lp, mx = score_targets(tiny.model, tiny.tokenizer, prompts, targets)
    got = df.set_index(["family", "probe_id"])
    for (fam, pid), lps, m in zip(keys, lp, mx):
        assert got.loc[(fam, pid), "logprob_sum"] == pytest.approx(lps.sum(), abs=1e-4)
        assert got.loc[(fam, pid), "logprob_mean"] == pytest.approx(lps.mean(), abs=1e-5)
        assert got.loc[(fam, pid), "argmax_logprob_sum"] == pytest.approx(m.sum(), abs=1e-4)
        assert got.loc[(fam, pid), "n_tokens"] == len(lps)
    write_probe_table(df, tmp_path / "p.parquet")
    back = read_probe_table(tmp_path / "p.parquet")
    assert back.equals(df)
    curves = family_curves(back)
    assert curves.loc[curves.family == "chosen", "logprob_sum"].iloc[0] == pytest.approx(
        df[df.family == "chosen"].logprob_sum.mean()
    )
    import pandas as pd

    with pytest.raises(DataError, match="duplicate row for recipe 'r', step 0, family 'chosen'"):
        write_probe_table(pd.concat([df, df.iloc[:1]]), tmp_path / "q.parquet")


# -- DPO -------------------------------------------------------------------------------------------


def test_dpo_loss_hand_worked():
    import torch

    from curator.training.dpo import dpo_loss

    loss, rc, rr = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5
    )
    assert rc.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.5)))  # -log sigmoid(0.5)


def test_sequence_logprobs_equal_the_probe_scores(tiny):
    import torch

    from curator.probes.scoring import score_targets
    from curator.training.dpo import sequence_logprobs
    from curator.training.sft import build_features, collate

    prompts, targets = ["Q?\nAnswer:", "Longer Q?\nAnswer:"], [" 12\nDone.", " 3 + 4 = 7\nDone."]
    feats, _ = build_features(tiny.tokenizer, prompts, targets, 256)
    ids, mask, labels = collate(feats, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        got = sequence_logprobs(tiny.model(input_ids=ids, attention_mask=mask).logits, labels)
    want = [lp.sum() for lp in score_targets(tiny.model, tiny.tokenizer, prompts, targets)[0]]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)


def _dpo_pairs(n=8):
    from curator.data.loaders import load_examples
    from curator.training.dpo import PreferencePair

    fmt = PromptFormat()
    rows = synthetic_preferences(load_examples(f"synthetic:easy?n={n}&seed=0&max_steps=2&max_operand=10"))
    return rows, [
        PreferencePair(
            fmt.prompt_text(r.example()), fmt.target_text(r.example("chosen")), fmt.target_text(r.example("rejected"))
        )
        for r in rows
    ]


def test_dpo_starts_at_log2_and_lowers_the_loss():
    from curator.models.tiny import tiny_model, tiny_tokenizer
    from curator.training import TrainSettings
    from curator.training.dpo import dpo_finetune

    tok = tiny_tokenizer()
    model = tiny_model(tokenizer=tok)
    _, pairs = _dpo_pairs(8)
    seen = []
    res = dpo_finetune(
        model,
        tok,
        pairs,
        TrainSettings(epochs=3, learning_rate=3e-3, batch_size=4, checkpoint_every=2),
        beta=0.1,
        on_checkpoint=lambda m, info: seen.append((info.step, m.training)),
        progress=False,
    )
    # policy == reference at the first step: every implicit reward is 0 and the loss is log 2
    assert res.step_losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert res.step_losses[-1] < res.step_losses[0]
    assert seen == [(2, False), (4, False), (6, False)] and not model.training  # eval mode as given
    assert res.final_metrics["reward_margin"] > 0


def test_squeezing_direction_dpo_lowers_log_p_of_rejected(tmp_path):
    """A deliberately small run (tiny model, 8 pairs): during DPO the summed log-prob of y- falls."""
    from curator.config import from_dict
    from curator.probes.run import ProbeRecipe, run_probes, squeeze_report

    recipe = from_dict(
        ProbeRecipe,
        {
            "name": "small",
            "model": {"name": "tiny-random"},
            "data": {"preferences": SMALL, "test": "synthetic:easy?n=2&seed=1&max_steps=2&max_operand=10"},
            "probes": {"n": 2, "eval_every": 2, "greedy_max_new_tokens": 8},
            "stages": [
                {"kind": "sft", "training": {"epochs": 1, "learning_rate": 0.003, "batch_size": 4}},
                {"kind": "dpo", "beta": 0.1, "training": {"epochs": 3, "learning_rate": 0.003, "batch_size": 4}},
            ],
        },
    )
    run = run_probes(recipe, tmp_path, progress=False)
    t = run.table
    dpo = t[t.stage == "dpo"]
    assert sorted(set(dpo.stage_step)) == [2, 4, 6] and sorted(set(t[t.stage == "sft"].step)) == [2]
    rep = squeeze_report(t)["small"]
    assert rep["rejected"]["change"] < 0
    # the margin log p(y+) - log p(y-) grows: DPO does what it is asked
    assert rep["chosen"]["change"] > rep["rejected"]["change"]
    assert (tmp_path / "DONE").exists() and (tmp_path / "probes.parquet").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["kind"] for s in summary["stages"]] == ["sft", "dpo"]


# -- bad input -------------------------------------------------------------------------------------


def test_bad_probe_rows_name_the_row(tmp_path):
    with pytest.raises(DataError, match="row 1 has no 'rejected' response"):
        rows_to_preferences([{"question": "a", "chosen": "x", "rejected": "y"}, {"question": "b", "chosen": "x"}], "f")
    with pytest.raises(DataError, match="row 0 has no 'chosen' response"):
        rows_to_preferences([{"question": "a", "rejected": "y"}], "f")
    with pytest.raises(DataError, match="row 0 has an empty 'chosen' response"):
        rows_to_preferences([{"question": "a", "chosen": "  ", "rejected": "y"}], "f")
    with pytest.raises(DataError, match="row 0 has no question"):
        rows_to_preferences([{"chosen": "x", "rejected": "y"}], "f")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"question": "q", "solution": "s", "answer": "1"}) + "\n")
    with pytest.raises(DataError, match="SFT set, not preference pairs"):
        load_preferences(sft)


def test_dpo_without_pairs_is_refused():
    from curator.models.tiny import tiny_model, tiny_tokenizer
    from curator.training import TrainSettings
    from curator.training.dpo import dpo_finetune

    tok = tiny_tokenizer()
    s = TrainSettings(epochs=1, batch_size=2)
    with pytest.raises(ConfigError, match="no preference pairs"):
        dpo_finetune(tiny_model(tokenizer=tok), tok, [], s)
    with pytest.raises(DataError, match=r"pair 0 is not \(prompt, chosen, rejected\)"):
        dpo_finetune(tiny_model(tokenizer=tok), tok, [("p", "only chosen")], s)
    with pytest.raises(DataError, match="pair 1 has no rejected response"):
        dpo_finetune(tiny_model(tokenizer=tok), tok, [("p", "a", "b"), ("p", "a", "")], s)


def test_unavailable_rephrasing_model_names_the_setting():
    with pytest.raises(
        ConfigError, match="probes.rephrase_model: the rephrasing model 'no-such/model' is not available"
    ):
        load_rephraser("no-such/model")


def test_recipe_errors_all_at_once_and_cli_exit_2(tmp_path):
    from curator.probes.run import load_probe_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text("probes: {n: 0, eval_evry: 2}\nstages: [{kind: ppo}]\n")
    with pytest.raises(ConfigError) as e:
        load_probe_recipe(bad)
    msg = str(e.value)
    assert "probes.eval_evry: unknown key. Did you mean 'eval_every'?" in msg
    assert "stages[0].kind: 'ppo' is not one of 'sft' | 'dpo' (did you mean 'dpo'?)" in msg
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "curator.cli.main", "probes", str(bad)], check=False, capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_shipped_probe_recipes_validate():
    from curator.probes.run import load_probe_recipe
    from curator.recipes import RECIPES_DIR

    a = load_probe_recipe(RECIPES_DIR / "probes" / "sft-dpo.yaml")
    b = load_probe_recipe(RECIPES_DIR / "probes" / "extended-sft-dpo.yaml")
    assert [s.targets for s in a.stages if s.kind == "sft"] == ["chosen"]
    assert [s.targets for s in b.stages if s.kind == "sft"] == ["both"]
    # everything but the name and the SFT targets is equal, so the two runs share probes and a figure
    from dataclasses import replace

    assert replace(b, name=a.name, stages=a.stages) == a


def test_greedy_responses_keep_the_stop_string():
    from curator.probes.families import greedy_responses

    class Fixed:
        def generate(self, prompts, n, params):
            assert params.temperature == 0 and params.stop == ()
            return [[" 1 + 1 = 2\nDone. and more"], [" never stops"]]

    got = greedy_responses(Fixed(), [row(0), row(1)], PromptFormat())
    assert got == [" 1 + 1 = 2\nDone.", " never stops"]


@pytest.mark.slow
def test_curate_probes_end_to_end_on_the_tiny_model(tmp_path):
    """Both shipped recipes on the tiny model through the CLI: table, figure, report; a rerun skips."""
    import subprocess
    import sys

    import matplotlib

    from curator.probes.scoring import read_probe_table

    backend = matplotlib.get_backend()
    sets = [
        "--set",
        "model.name=tiny-random",
        "--set",
        "model.lora=null",
        "--set",
        "probes.greedy_max_new_tokens=8",
        "--set",
        "data.preferences=synthetic:easy?n=6&seed=0&max_steps=2&max_operand=10",
        "--set",
        "stages.0.training.epochs=1",
        "--set",
        "stages.1.training.epochs=2",
        "--set",
        "probes.eval_every=2",
    ]
    cmd = [
        sys.executable,
        "-m",
        "curator.cli.main",
        "probes",
        "recipes/probes/sft-dpo.yaml",
        "recipes/probes/extended-sft-dpo.yaml",
        "--out",
        str(tmp_path),
        "--quiet",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny ops: threads only contend on a shared CI machine
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "change of the logprob sum during DPO" in r.stdout and "rejected" in r.stdout
    assert (tmp_path / "probes.png").stat().st_size > 10_000
    t = read_probe_table(tmp_path / "extended-sft-dpo" / "probes.parquet")
    # 6 rows x 2 (y+ and y-) / batch 4 = 3 SFT steps, 1 epoch; DPO 2 steps per epoch, 2 epochs; every 2 steps
    # and at each stage's end
    assert sorted(set(t.step)) == [0, 2, 3, 5, 7] and t[t.stage == "dpo"].stage_step.max() == 4
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "finished earlier" in again.stdout
    changed = subprocess.run(cmd + ["--set", "seed=1"], check=False, capture_output=True, text=True, env=env)
    assert changed.returncode == 2 and "holds a finished run of a different 'sft-dpo' recipe" in changed.stderr
    assert matplotlib.get_backend() == backend


def test_figure_has_a_panel_per_family_and_the_argmax(tmp_path):
    import pandas as pd

    from curator.probes.run import plot_probes, squeeze_report

    rows = []
    for recipe, drop in (("a", 1.0), ("b", 0.5)):
        for step, stage, ss in ((0, "init", 0), (2, "sft", 2), (4, "dpo", 2)):
            for fam in ("chosen", "rejected", "unrelated"):
                v = -10.0 - (drop * (fam == "rejected") * (stage == "dpo"))
                rows.append(
                    {
                        "recipe": recipe,
                        "stage": stage,
                        "stage_index": {"init": 0, "sft": 1, "dpo": 2}[stage],
                        "step": step,
                        "stage_step": ss,
                        "epoch": 0.0,
                        "family": fam,
                        "probe_id": "p",
                        "n_tokens": 5,
                        "logprob_sum": v,
                        "logprob_mean": v / 5,
                        "argmax_logprob_sum": -1.0 + (stage == "dpo"),
                        "argmax_logprob_mean": 0.0,
                    }
                )
    t = pd.DataFrame(rows)
    fig = plot_probes(t, tmp_path / "f.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == [
        "y+ (chosen)",
        "y- (rejected)",
        "unrelated sentence",
        "argmax token along y+ (teacher forced)",
    ]
    assert all(len(ax.get_lines()) == 2 + 1 for ax in visible)  # two recipes + the DPO-start line
    rep = squeeze_report(t)
    assert rep["a"]["rejected"]["change"] == pytest.approx(-1.0) and rep["b"]["rejected"]["change"] == pytest.approx(
        -0.5
    )
    assert rep["a"]["chosen"]["change"] == 0 and rep["a"]["argmax"]["change"] == pytest.approx(1.0)
