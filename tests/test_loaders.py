"""Loaders: every local format, GSM8K/MATH layouts, field maps, ids, synthetic specs, errors."""

import json
import logging

import pandas as pd
import pytest

from curator.data.example import Example, content_id
from curator.data.grading import grade_references
from curator.data.loaders import FieldMap, load_examples, rows_to_examples, save_examples
from curator.data.synthetic import synthetic_task
from curator.errors import ConfigError, CuratorError, DataError

GSM8K_ROWS = [
    {
        "question": "Natalia sold clips to 48 friends in April, and half as many in May. How many in all?",
        "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 72",
    },
    {
        "question": "A shop sells 1,000 pens a day for 2 days. How many pens?",
        "answer": "1,000 * 2 = 2,000 pens.\n#### 2,000",
    },
    {
        "question": "Weng earns $12 an hour. How much for 50 minutes?",
        "answer": "12/60 = $0.2 per minute.\n0.2 * 50 = $10.\n#### 10",
    },
]

MATH_ROWS = [
    {
        "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "level": "Level 1",
        "type": "Prealgebra",
        "solution": "We have $\\frac{2}{4} + \\frac{1}{4} = \\boxed{\\dfrac{3}{4}}$.",
        "unique_id": "test/1.json",
    },
    {
        "problem": "Solve $x^2 = 4$ for $x > 0$.",
        "level": "Level 2",
        "type": "Algebra",
        "solution": "Taking roots, $x = \\boxed{2}$.",
        "unique_id": "test/2.json",
    },
    {
        "problem": "Find the interval.",
        "level": "Level 5",
        "type": "Algebra",
        "solution": "It is $\\boxed{\\left( -\\infty, \\frac{1}{2} \\right]}$.",
        "unique_id": "test/3.json",
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def as_tuples(exs):
    return [(e.id, e.question, e.solution, e.answer) for e in exs]


# ---------------------------------------------------------------- layouts


def test_gsm8k_layout_detected(tmp_path):
    exs = load_examples(write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS))
    assert [e.answer for e in exs] == ["72", "2000", "10"]
    assert exs[0].solution == GSM8K_ROWS[0]["answer"]  # the whole worked answer is the target
    assert exs[0].question == GSM8K_ROWS[0]["question"]
    assert exs[0].id == content_id(GSM8K_ROWS[0]["question"], GSM8K_ROWS[0]["answer"])
    assert exs[0].meta["layout"] == "gsm8k" and exs[0].meta["row"] == 1
    assert grade_references(exs, "gsm8k").rate == 1.0


def test_math_layout_detected(tmp_path):
    path = tmp_path / "math.json"
    path.write_text(json.dumps(MATH_ROWS), encoding="utf-8")
    exs = load_examples(path)
    assert [e.id for e in exs] == ["test/1.json", "test/2.json", "test/3.json"]  # unique_id used
    assert [e.answer for e in exs] == ["\\dfrac{3}{4}", "2", "\\left( -\\infty, \\frac{1}{2} \\right]"]
    assert exs[0].meta["level"] == "Level 1" and exs[0].meta["type"] == "Prealgebra"
    assert exs[0].meta["layout"] == "math"
    assert grade_references(exs, "math").rate == 1.0
    assert grade_references(exs, "auto").rate == 1.0


def test_math_answer_column_wins(tmp_path):
    rows = [dict(MATH_ROWS[0], answer="0.75")]
    exs = load_examples(write_jsonl(tmp_path / "m.jsonl", rows))
    assert exs[0].answer == "0.75"
    assert grade_references(exs, "math").n_correct == 1  # \dfrac{3}{4} == 0.75


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv", "json-lines-in-.json", "json-columns"])
def test_every_format_loads_the_same(tmp_path, fmt):
    df = pd.DataFrame(GSM8K_ROWS)
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", GSM8K_ROWS)
    elif fmt == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(GSM8K_ROWS))
    elif fmt == "json-lines-in-.json":
        path = write_jsonl(tmp_path / "d.json", GSM8K_ROWS)
    elif fmt == "json-columns":
        path = tmp_path / "d.json"
        path.write_text(json.dumps({c: list(df[c]) for c in df.columns}))
    elif fmt == "parquet":
        path = tmp_path / "d.parquet"
        df.to_parquet(path)
    else:
        path = tmp_path / "d.csv"
        df.to_csv(path, index=False)
    exs = load_examples(path)
    assert as_tuples(exs) == as_tuples(load_examples(write_jsonl(tmp_path / "ref.jsonl", GSM8K_ROWS)))


def test_json_split_key(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": GSM8K_ROWS[:2], "test": GSM8K_ROWS[2:]}))
    assert [e.answer for e in load_examples(path)] == ["72", "2000"]
    assert [e.answer for e in load_examples(path, split="test")] == ["10"]


def test_csv_keeps_answer_strings(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame([{"question": "q", "solution": "so 1/2", "answer": "007"}]).to_csv(path, index=False)
    assert load_examples(path)[0].answer == "007"


def test_local_dataset_folder_through_datasets(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM8K_ROWS)
    exs = load_examples(folder)
    assert [e.answer for e in exs] == ["72", "2000", "10"]


# ---------------------------------------------------------------- field maps, ids, limit


def test_field_mapping(tmp_path):
    rows = [
        {"prompt": "2+2?", "reasoning": "2 + 2 = 4", "final": "4", "key": "a"},
        {"prompt": "3+3?", "reasoning": "3 + 3 = 6", "final": "6", "key": "b"},
    ]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    exs = load_examples(path, fields={"question": "prompt", "solution": "reasoning", "answer": "final"}, id_field="key")
    assert as_tuples(exs) == [("a", "2+2?", "2 + 2 = 4", "4"), ("b", "3+3?", "3 + 3 = 6", "6")]
    again = load_examples(path, fields=["question=prompt", "solution=reasoning", "answer=final"], id_field="key")
    assert as_tuples(again) == as_tuples(exs)


def test_answer_derived_from_solution_when_no_answer_column(tmp_path):
    rows = [
        {"question": "q1", "solution": "so it is 5.\n#### 5"},
        {"question": "q2", "solution": "Thus $\\boxed{7}$."},
        {"question": "q3", "solution": "The answer is 9."},
    ]
    assert [e.answer for e in load_examples(write_jsonl(tmp_path / "d.jsonl", rows))] == ["5", "7", "9"]


def test_limit_and_id_column(tmp_path):
    rows = [dict(r, id=f"g{i}") for i, r in enumerate(GSM8K_ROWS)]
    exs = load_examples(write_jsonl(tmp_path / "d.jsonl", rows), limit=2)
    assert [e.id for e in exs] == ["g0", "g1"]


def test_exact_duplicate_rows_are_dropped(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        exs = load_examples(write_jsonl(tmp_path / "d.jsonl", GSM8K_ROWS + GSM8K_ROWS[:1]))
    assert len(exs) == 3
    assert "1 exact duplicate" in caplog.text


def test_field_map_parse_errors():
    assert FieldMap.parse(None) == FieldMap()
    with pytest.raises(ConfigError, match="NAME=COLUMN"):
        FieldMap.parse(["question"])
    with pytest.raises(ConfigError, match="unknown field.*'questoin'"):
        FieldMap.parse({"questoin": "q"})


# ---------------------------------------------------------------- synthetic specs and round trip


def test_synthetic_spec():
    exs = load_examples("synthetic:medium?n=30&seed=4")
    assert as_tuples(exs) == as_tuples(synthetic_task("medium").generate(30, seed=4))
    assert len(load_examples("synthetic?n=5")) == 5
    assert len(load_examples("synthetic:easy?n=50", limit=7)) == 7
    few = load_examples("synthetic:hard?n=10&n_traces=2&skills=rates,shopping&max_steps=6")
    assert {e.meta["skill"] for e in few} <= {"rates", "shopping"}
    assert all(len(e.meta["traces"]) == 2 and e.meta["steps"] <= 6 for e in few)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("synthetic:easy?foo=1", "unknown option 'foo'"),
        ("synthetic:easy?n=abc", "must be an integer"),
        ("synthetic:easy?n=0", "n must be >= 1"),
        ("synthetic:nightmare", "unknown synthetic preset 'nightmare'"),
        ("synthetic:easy?max_steps=40", "max_steps"),
    ],
)
def test_synthetic_spec_errors(spec, match):
    with pytest.raises(CuratorError, match=match):
        load_examples(spec)


def test_save_and_reload_round_trip(tmp_path):
    exs = synthetic_task("easy").generate(20, seed=0)
    path = tmp_path / "out" / "syn.jsonl"
    assert save_examples(exs, path) == 20
    back = load_examples(path)
    assert as_tuples(back) == as_tuples(exs)
    assert [b.meta["traces"] for b in back] == [e.meta["traces"] for e in exs]
    kids = synthetic_task("easy").similar(back[0], 2, seed=0)  # structure survives JSON
    assert all(k.meta["structure"] == exs[0].meta["structure"] for k in kids)


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no such file"):
        load_examples("data/typo.parquet")


def test_unknown_format(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text("hello")
    with pytest.raises(DataError, match=r"unknown data format '\.txt'.*\.jsonl"):
        load_examples(p)


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.json", "[]"), ("e.csv", ""), ("e2.jsonl", "\n\n")])
def test_empty_dataset(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match="empty"):
        load_examples(p)


def test_empty_parquet(tmp_path):
    p = tmp_path / "e.parquet"
    pd.DataFrame({"question": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(p)
    with pytest.raises(DataError, match="empty"):
        load_examples(p)


def test_bad_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(GSM8K_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_examples(p)


def test_missing_question_column_lists_columns(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "solution": "#### 1"}])
    with pytest.raises(
        DataError,
        match=r"no question column.*available columns: prompt, solution.*"
        r"--field question=COLUMN",
    ):
        load_examples(p)


def test_misnamed_mapped_column_suggests(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "solution": "#### 1"}])
    with pytest.raises(DataError, match=r"field 'question' is mapped to column 'promt'.*did you mean 'prompt'"):
        load_examples(p, fields={"question": "promt"})
    with pytest.raises(DataError, match="id column 'uid' does not exist"):
        load_examples(p, fields={"question": "prompt"}, id_field="uid")


def test_row_missing_a_field_is_named(tmp_path):
    rows = [GSM8K_ROWS[0], {"answer": "#### 3"}, GSM8K_ROWS[1], {"question": None, "answer": "#### 4"}]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(
        DataError,
        match=r"2 of 4 rows unusable — field 'question' \(column 'question'\) "
        r"is missing or empty: 2 row\(s\), e.g. row 2, 4",
    ):
        load_examples(p)


def test_unparseable_answers_strict_and_lenient(tmp_path, caplog):
    rows = list(GSM8K_ROWS) + [{"question": f"q{i}", "answer": "no marker here"} for i in range(7)]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"7 of 10 rows unusable — no final answer.*row 4, 5, 6, 7, 8\b"):
        load_examples(p)
    with caplog.at_level(logging.WARNING):
        exs = load_examples(p, strict=False)
    assert len(exs) == 3
    assert "dropped 7 of 10 rows unusable" in caplog.text
    all_bad = write_jsonl(tmp_path / "bad.jsonl", rows[3:])
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(all_bad, strict=False)


def test_duplicate_source_ids(tmp_path):
    rows = [dict(GSM8K_ROWS[0], id="x"), dict(GSM8K_ROWS[1], id="y"), dict(GSM8K_ROWS[2], id="x")]
    with pytest.raises(DataError, match="duplicate id 'x' in rows 1 and 3"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", rows))


def test_limit_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="limit"):
        load_examples("synthetic", limit=0)


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    import curator.data.loaders as loaders

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(loaders, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443: no route")
    with pytest.raises(
        DataError,
        match=r"cannot load 'openai/gsm8k': the Hugging Face hub is "
        r"unreachable .*Pass a local .jsonl",
    ):
        load_examples("openai/gsm8k", config="main")


def test_hub_offline_mode_error_from_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # offline mode: the real datasets.load_dataset fails at once (nothing cached); we wrap it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DataError,
        match=r"cannot load 'no-such-org/no-such-set' \(split 'train'\) "
        r"with datasets.load_dataset: .*local",
    ):
        load_examples("no-such-org/no-such-set")


def test_rows_to_examples_directly():
    exs = rows_to_examples([{"question": "q", "solution": "\\boxed{3}"}], where="mem")
    assert exs == [Example(id=content_id("q", "\\boxed{3}"), question="q", solution="\\boxed{3}", answer="3")]
    assert exs[0].meta["source"] == "mem"


def test_synthetic_task_from_source():
    from curator.data.loaders import synthetic_task_from_source

    task = synthetic_task_from_source("synthetic:hard?n=5&seed=3&n_traces=2")
    assert task == synthetic_task("hard", n_traces=2)
    assert synthetic_task_from_source("synthetic") == synthetic_task("easy")
    with pytest.raises(ConfigError, match="not a synthetic source"):
        synthetic_task_from_source("data/train.jsonl")


# -- what HF users keep on disk: save_to_disk directories, TRL's prompt/completion and messages --


def test_save_to_disk_dataset_directory_loads_without_the_hub(tmp_path, monkeypatch):
    import datasets

    from curator.data import loaders

    def no_hub(*a, **k):
        raise AssertionError("a save_to_disk directory must not go near the hub")

    monkeypatch.setattr(loaders, "_hub_unreachable", no_hub)
    datasets.Dataset.from_list(GSM8K_ROWS).save_to_disk(str(tmp_path / "ds"))
    exs = load_examples(tmp_path / "ds")
    assert [e.answer for e in exs] == ["72", "2000", "10"]
    assert exs[0].question == GSM8K_ROWS[0]["question"]
    assert len(load_examples(tmp_path / "ds", limit=2)) == 2


def test_save_to_disk_dataset_dict_takes_the_split(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(GSM8K_ROWS[:2]), "test": datasets.Dataset.from_list(GSM8K_ROWS[2:])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert [e.answer for e in load_examples(tmp_path / "dd")] == ["72", "2000"]
    assert [e.answer for e in load_examples(tmp_path / "dd", split="test")] == ["10"]
    with pytest.raises(DataError, match=r"dd: the saved DatasetDict has no split 'validation'; available: train, test"):
        load_examples(tmp_path / "dd", split="validation")


def test_prompt_completion_columns(tmp_path):
    rows = [
        {"prompt": "What is 2+3?", "completion": "2+3 = 5.\n#### 5"},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 4*2?"}],
            "completion": [{"role": "assistant", "content": "4*2 = 8.\n#### 8"}],
        },
    ]
    path = tmp_path / "pc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_examples(path)
    assert (a.question, a.solution, a.answer) == ("What is 2+3?", "2+3 = 5.\n#### 5", "5")
    assert (b.question, b.solution, b.answer) == ("What is 4*2?", "4*2 = 8.\n#### 8", "8")


def test_messages_column_takes_the_last_user_turn_and_the_final_answer(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You solve math."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "What is 9-4?"},
                {"role": "assistant", "content": "9-4 = 5. The answer is 5"},
            ],
            "id": "m1",
        },
        {"messages": [{"role": "user", "content": "No reply here"}], "id": "m2"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"field 'solution' .*row 2"):
        load_examples(path)
    (ex,) = load_examples(path, strict=False)
    assert (ex.id, ex.question, ex.solution, ex.answer) == ("m1", "What is 9-4?", "9-4 = 5. The answer is 5", "5")
    assert ex.meta["system"] == "You solve math."
