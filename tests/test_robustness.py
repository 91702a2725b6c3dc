"""Robustness probes on a scripted sampler with hand-computed accuracies per PreMemAcc bucket."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from curator.analysis.robustness import assign_buckets, bucket_labels, final_premem, robustness
from curator.data.example import Example
from curator.data.format import PromptFormat
from curator.errors import CuratorError
from curator.sampling.base import SamplingParams


class HashGrader:
    """Minimal GSM8K-style grader: the answer is the number after the last '####'."""

    name = "test"

    def is_correct(self, completion: str, answer: str) -> bool:
        m = re.findall(r"####\s*(-?\d+)", completion)
        return bool(m) and m[-1] == answer


class ScriptedSampler:
    """Returns, for each prompt, the completions scripted for (question, forced prefix)."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    def generate(self, prompts, n, params):
        self.calls.append((list(prompts), n, params))
        out = []
        for p in prompts:
            question, _, forced = p.partition("\nAnswer:")
            outs = self.script[(question, forced)]
            assert len(outs) == n
            out.append(list(outs))
        return out

    def target_logprobs(self, prompts, targets):  # not used by robustness
        raise NotImplementedError


def right(ex, i):
    return f" so the total is {ex.answer}. #### {ex.answer}"


def wrong(ex, i):
    return f" so the total is {int(ex.answer) + 1}. #### {int(ex.answer) + 1}"


# correct samples out of k = 4 per (example, condition)
PLAN = {
    #      premem  unperturbed  "First"  "We know that"
    "e0": (0.1, 4, 1, 0),
    "e1": (0.1, 3, 0, 2),
    "e2": (0.5, 4, 2, 3),
    "e3": (0.9, 4, 4, 3),
    "e4": (1.0, 4, 4, 4),
}


def setup():
    examples = [
        Example.make(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}", str(2 * i), id=eid)
        for i, eid in enumerate(PLAN)
    ]
    script = {}
    for ex in examples:
        _, a, b, c = PLAN[ex.id]
        for forced, n_right in (("", a), (" First", b), (" We know that", c)):
            script[(ex.question, forced)] = [right(ex, i) if i < n_right else wrong(ex, i) for i in range(4)]
    premem = pd.Series({eid: v[0] for eid, v in PLAN.items()})
    return examples, ScriptedSampler(script), premem


def test_bucket_table_hand_computed(tmp_path):
    examples, sampler, premem = setup()
    params = SamplingParams(temperature=0.8, seed=3)
    rep = robustness(
        sampler, examples, PromptFormat(), HashGrader(), premem, prefixes=["First", "We know that"], k=4, params=params
    )
    # prompts are prompt + " " + prefix (the target template starts with a space), one call per condition
    assert [c[0][0] for c in sampler.calls] == [
        "What is 0 + 0?\nAnswer:",
        "What is 0 + 0?\nAnswer: First",
        "What is 0 + 0?\nAnswer: We know that",
    ]
    assert all(c[1] == 4 and c[2] is params for c in sampler.calls)
    t = rep.table.set_index("bucket")
    assert list(t.index) == ["[0, 0.2)", "[0.2, 0.4)", "[0.4, 0.6)", "[0.6, 0.8)", "[0.8, 1]"]
    assert t["n"].tolist() == [2, 0, 1, 0, 2]
    # [0, 0.2): e0, e1 -> (4+3)/8, (1+0)/8, (0+2)/8
    assert t.loc["[0, 0.2)", ["unperturbed", "First", "We know that"]].tolist() == [7 / 8, 1 / 8, 2 / 8]
    assert t.loc["[0.4, 0.6)", ["unperturbed", "First", "We know that"]].tolist() == [1.0, 0.5, 0.75]
    # [0.8, 1]: e3 and e4 (1.0 falls in the closed top bucket)
    assert t.loc["[0.8, 1]", ["unperturbed", "First", "We know that"]].tolist() == [1.0, 1.0, 7 / 8]
    assert np.isnan(t.loc["[0.2, 0.4)", "First"])
    per = rep.per_example.set_index("example_id")
    assert per.loc["e1", "We know that"] == 0.5 and per.loc["e3", "bucket"] == "[0.8, 1]"

    paths = rep.write(tmp_path)
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    md = paths["report"].read_text()
    assert "| [0, 0.2) | 2 | 0.875 | 0.125 | 0.250 |" in md
    assert "| [0.2, 0.4) | 0 | – | – | – |" in md


def test_prefix_is_graded_with_the_completion():
    # the forced prefix carries the answer marker: only prefix + completion grades as correct
    ex = Example.make("q", "#### 5", "5", id="x")
    sampler = ScriptedSampler({("q", ""): ["#### 5"] * 2, ("q", " ####"): [" 5", " 6"]})
    rep = robustness(sampler, [ex], PromptFormat(), HashGrader(), {"x": 0.3}, prefixes=["####"], k=2)
    assert rep.per_example.loc[0, "####"] == 0.5


def test_examples_without_premem_are_counted():
    examples, sampler, premem = setup()
    rep = robustness(sampler, examples, PromptFormat(), HashGrader(), premem.drop("e2"), k=4)
    assert rep.excluded == 1 and rep.table["n"].sum() == 4
    assert "1 example(s) had no PreMemAcc" in rep.to_markdown()


def test_errors():
    examples, sampler, premem = setup()
    g, f = HashGrader(), PromptFormat()
    with pytest.raises(CuratorError, match="none of the 5 examples has a PreMemAcc"):
        robustness(sampler, examples, f, g, pd.Series({"zz": 0.5}))
    with pytest.raises(CuratorError, match="at least one prefix"):
        robustness(sampler, examples, f, g, premem, prefixes=[])
    with pytest.raises(CuratorError, match=">= 1"):
        robustness(sampler, examples, f, g, premem, k=0)
    with pytest.raises(CuratorError, match="outside"):
        assign_buckets([0.5, 1.2])
    with pytest.raises(CuratorError, match="increasing"):
        assign_buckets([0.5], edges=[0, 0.5, 0.5, 1])


def test_buckets():
    assert bucket_labels([0, 0.5, 1]) == ["[0, 0.5)", "[0.5, 1]"]
    assert assign_buckets([0, 0.2, 0.19999, 0.8, 1.0]) == ["[0, 0.2)", "[0.2, 0.4)", "[0, 0.2)", "[0.8, 1]", "[0.8, 1]"]


def test_final_premem_from_ledger():
    from curator.dynamics.ledger import Ledger

    led = Ledger.from_arrays(["a", "b"], np.array([[2, 4], [4, 4]]), k=4, perplexity=np.array([[2.0, 2.0], [1.0, 1.0]]))
    pm = final_premem(led, 1.1)
    assert pm.to_dict() == {"a": 1.0, "b": 0.0}


@pytest.mark.slow  # loads a tiny model and samples from it (~10 s on an idle CPU)
def test_cli_robustness_end_to_end(tmp_path):
    """The command wires ledger metadata, data, model and sampler together (tiny random model)."""
    from click.testing import CliRunner

    from curator.cli.main import cli
    from curator.data.loaders import load_examples
    from curator.dynamics.ledger import Ledger

    src = "synthetic:easy?n=3&seed=0"
    ids = [e.id for e in load_examples(src)]
    # final PreMemAcc: 1/2 (not memorized, acc 2/4), 0 (memorized), 1 (acc 4/4)
    led = Ledger.from_arrays(
        ids,
        np.array([[2], [4], [4]]),
        k=4,
        perplexity=np.array([[3.0], [1.0], [2.0]]),
        p=1.1,
        format={"prompt": "{question}\nAnswer:", "target": " {solution}\nDone.", "chat": False, "stop": ["\nDone."]},
        sampling={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 64},
        grader="gsm8k",
    )
    led.to_parquet(tmp_path / "ledger.parquet")
    res = CliRunner().invoke(
        cli,
        [
            "robustness",
            "--model",
            "tiny-random",
            "--ledger",
            str(tmp_path / "ledger.parquet"),
            "--data",
            src,
            "--samples",
            "2",
            "--max-new-tokens",
            "4",
            "--prefix",
            "First",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "out" / "robustness.csv").set_index("bucket")
    assert table["n"].to_dict() == {"[0, 0.2)": 1, "[0.2, 0.4)": 0, "[0.4, 0.6)": 1, "[0.6, 0.8)": 0, "[0.8, 1]": 1}
    assert list(table.columns) == ["n", "unperturbed", "First"]
    assert (tmp_path / "out" / "robustness.png").exists()


def test_a_prefix_outside_the_vocabulary_is_refused():
    """A word the tokenizer cannot spell would be forced as the unknown token: refused, named."""
    from curator.data.tokenizer import piece_tokenizer

    tok = piece_tokenizer([" So", " the", " There"], split=r" ?[A-Za-z]+|.", model_max_length=64)
    examples, sampler, premem = setup()
    g, f = HashGrader(), PromptFormat()
    refused = r"prefix 'First' is not in the model's vocabulary \(it encodes as \['<unk>'\]\)"
    with pytest.raises(CuratorError, match=refused):
        robustness(sampler, examples, f, g, premem, prefixes=["So the", "First"], tokenizer=tok)
    with pytest.raises(CuratorError, match="'So now'"):
        robustness(sampler, examples, f, g, premem, prefixes=["So now"], tokenizer=tok)
