"""Synthetic tasks: determinism, every trace correct, traces differ, `similar` keeps structure."""

import json
import re

import pytest

from curator.data.example import Example
from curator.data.grading import GSM8KGrader, grade_references
from curator.data.synthetic import SKILLS, SyntheticTask, synthetic_presets, synthetic_task
from curator.errors import ConfigError, CuratorError

EQUATION = re.compile(r"((?:\d+ [-+*/] )+\d+) = (\d+)")


def _check_arithmetic(trace: str) -> int:
    """Every 'a op b ... = c' in a trace is true; returns how many equations there are."""
    n = 0
    for m in EQUATION.finditer(trace):
        assert eval(m.group(1)) == int(m.group(2)), (m.group(0), trace)
        n += 1
    return n


@pytest.fixture(scope="module", params=["easy", "medium", "hard"])
def dataset(request):
    return request.param, synthetic_task(request.param).generate(400, seed=11)


def test_generate_is_deterministic():
    task = synthetic_task("medium")
    a, b = task.generate(50, seed=3), task.generate(50, seed=3)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    c = task.generate(50, seed=4)
    assert {e.id for e in a}.isdisjoint({e.id for e in c})
    # a smaller request is a prefix of a larger one
    assert [e.id for e in task.generate(10, seed=3)] == [e.id for e in a[:10]]


def test_example_from_seed_rebuilds_it():
    task = synthetic_task("easy")
    ex = task.generate(5, seed=2)[3]
    again = task.example_from_seed(ex.meta["seed"])
    assert again.to_dict() == ex.to_dict()


def test_every_trace_reaches_the_answer(dataset):
    name, exs = dataset
    g = GSM8KGrader()
    assert len({e.id for e in exs}) == len(exs)
    for ex in exs:
        traces = ex.meta["traces"]
        assert ex.solution == traces[ex.meta["target_trace"]]
        assert int(ex.answer) >= 0 and str(int(ex.answer)) == ex.answer  # integer answers
        for tr in traces:
            assert tr.splitlines()[-1] == f"#### {ex.answer}"
            assert g.is_correct(tr, ex.answer)
            assert _check_arithmetic(tr) >= 1
    rep = grade_references(exs, "gsm8k")
    assert rep.n_correct == rep.n == 400


def test_traces_really_differ(dataset):
    name, exs = dataset
    n_traces = synthetic_task(name).n_traces
    differ_in_math = 0
    for ex in exs:
        traces = ex.meta["traces"]
        assert len(traces) == n_traces
        assert len(set(traces)) == len(traces)
        sigs = {tuple(m.group(0) for m in EQUATION.finditer(t)) for t in traces}
        differ_in_math += len(sigs) > 1
    # not only rephrasings: most problems have traces whose computations differ
    assert differ_in_math / len(exs) > 0.9


def test_steps_and_knobs_respected():
    task = SyntheticTask(
        min_steps=4, max_steps=4, max_operand=30, distractors=2, n_traces=2, skills=("shopping", "comparison")
    )
    exs = task.generate(200, seed=0)
    assert {e.meta["steps"] for e in exs} == {4}
    assert {e.meta["skill"] for e in exs} == {"shopping", "comparison"}
    for ex in exs:
        assert ex.meta["distractors"] == 2
        # these skills have no shortcut method: every trace spells out exactly 4 operations
        for tr in ex.meta["traces"]:
            ops = sum(len(re.findall(r" [-+*/] ", m.group(1))) for m in EQUATION.finditer(tr))
            assert ops == 4, tr


def test_distractors_add_sentences_but_not_to_the_answer():
    base = SyntheticTask(distractors=0).generate(30, seed=5)
    noisy = SyntheticTask(distractors=2).generate(30, seed=5)
    for a, b in zip(base, noisy):
        assert b.answer == a.answer and b.meta["structure"] == a.meta["structure"]
        assert b.question.count(".") == a.question.count(".") + 2


def test_easy_is_short():
    exs = synthetic_task("easy").generate(300, seed=0)
    sentences = [e.question.count(".") + e.question.count("?") for e in exs]
    lines = [len(e.solution.splitlines()) for e in exs]  # including the '#### N' line
    assert max(sentences) <= 5 and sum(sentences) / len(exs) <= 3.5
    assert max(len(e.question.split()) for e in exs) <= 45
    assert min(lines) >= 2 and max(lines) <= 6 and sum(lines) / len(exs) <= 4


def test_all_skills_appear():
    exs = synthetic_task("medium").generate(300, seed=1)
    assert {e.meta["skill"] for e in exs} == set(SKILLS)


def test_similar_keeps_skill_and_structure_changes_numbers():
    task = synthetic_task("medium")
    for parent in task.generate(25, seed=9):
        kids = task.similar(parent, 4, seed=1)
        assert len(kids) == 4
        for kid in kids:
            assert kid.meta["skill"] == parent.meta["skill"]
            assert kid.meta["structure"] == parent.meta["structure"]
            assert kid.meta["steps"] == parent.meta["steps"]
            assert kid.meta["parent_id"] == parent.id
            assert kid.question != parent.question and kid.id != parent.id
            assert all(GSM8KGrader().is_correct(t, kid.answer) for t in kid.meta["traces"])

        def numbers(q):
            return re.findall(r"\d+", q)

        assert any(numbers(k.question) != numbers(parent.question) for k in kids)
        assert task.similar(parent, 4, seed=1) == kids  # deterministic


def test_similar_after_json_round_trip():
    task = synthetic_task("easy")
    parent = task.generate(1, seed=0)[0]
    loaded = Example.from_dict(json.loads(json.dumps(parent.to_dict())))
    assert isinstance(loaded.meta["structure"], list)
    kids = task.similar(loaded, 3, seed=0)
    assert all(tuple(k.meta["structure"][:1]) == (parent.meta["skill"],) for k in kids)
    assert [k.meta["structure"] for k in kids] == [parent.meta["structure"]] * 3


def test_similar_rejects_non_synthetic_examples():
    with pytest.raises(CuratorError, match="no synthetic structure"):
        synthetic_task("easy").similar(Example.make("q", "#### 1", "1"), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_steps": 0}, "min_steps"),
        ({"min_steps": 4, "max_steps": 3}, r"min_steps \(4\) must be <= max_steps \(3\)"),
        ({"max_steps": 11}, "max_steps"),
        ({"max_operand": 5}, "max_operand"),
        ({"n_traces": 0}, "n_traces"),
        ({"skills": ("shoping",)}, "unknown skills"),
        ({"distractors": -1}, "distractors"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticTask(**kwargs)


def test_presets_and_overrides():
    assert set(synthetic_presets.names()) == {"easy", "medium", "hard"}
    t = synthetic_task("hard", n_traces=2, skills="rates,sharing")
    assert t.n_traces == 2 and t.skills == ("rates", "sharing") and t.max_steps == 8
    with pytest.raises(CuratorError, match="Did you mean 'easy'"):
        synthetic_task("eazy")
    with pytest.raises(ConfigError, match="unknown synthetic task settings"):
        synthetic_task("easy", steps=3)


def test_generate_reports_exhausted_space(monkeypatch):
    task = synthetic_task("easy")
    one = task.generate(1, seed=0)[0]
    # a family that can only make one problem cannot give two distinct ones
    monkeypatch.setattr(SyntheticTask, "_example", lambda self, seed, **kw: one)
    assert task.generate(1, seed=5) == [one]
    with pytest.raises(CuratorError, match="only 1 distinct problems of 2"):
        task.generate(2, seed=0)
