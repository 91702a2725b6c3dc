"""`curate data preview` and `curate data synth`, including their one-line errors (exit 2)."""

import json

import pytest

from curator.cli.main import main


def run(argv, capsys):
    """Run `curate ARGV`; return (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "sub" / "syn.jsonl"
    synth = ["data", "synth", "--n", "25", "--preset", "medium", "--seed", "3", "--steps", "3-4", "--traces", "2"]
    code, stdout, _ = run(synth + ["--out", str(out)], capsys)
    assert code == 0 and f"wrote 25 examples to {out}" in stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 25
    assert set(rows[0]) == {"id", "question", "solution", "answer", "meta"}
    for r in rows:
        assert r["solution"].endswith(f"#### {r['answer']}")
        assert len(r["meta"]["traces"]) == 2 and 3 <= r["meta"]["steps"] <= 4
    # same arguments, same file
    again = tmp_path / "again.jsonl"
    run(synth + ["--out", str(again)], capsys)
    assert again.read_text() == out.read_text()


def test_preview_synthetic_file_grades_100(tmp_path, capsys):
    out = tmp_path / "syn.jsonl"
    run(["data", "synth", "--n", "40", "--out", str(out)], capsys)
    code, stdout, _ = run(["data", "preview", str(out), "--n", "2"], capsys)
    assert code == 0
    assert stdout.count("=== ") == 2 and stdout.count("-> correct") == 2
    assert stdout.strip().splitlines()[-1] == "40 examples; reference grading (auto): 40/40 correct (100.0%)"


def test_preview_gsm8k_and_math_layouts(tmp_path, capsys):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(
        json.dumps({"question": "2 + 3?", "answer": "2 + 3 = 5\n#### 5"})
        + "\n"
        + json.dumps({"question": "1,000 + 1?", "answer": "#### 1,001"})
        + "\n"
    )
    code, stdout, _ = run(["data", "preview", str(gsm), "--grader", "gsm8k"], capsys)
    assert code == 0 and "answer: 1001" in stdout
    assert "2/2 correct (100.0%)" in stdout
    math = tmp_path / "math.csv"
    math.write_text('problem,solution\n"Half?","It is $\\boxed{\\frac12}$."\n')
    code, stdout, _ = run(["data", "preview", str(math), "--grader", "math"], capsys)
    assert code == 0 and "answer: \\frac12" in stdout and "1/1 correct" in stdout


def test_preview_with_field_mapping_and_lenient(tmp_path, capsys):
    p = tmp_path / "d.jsonl"
    p.write_text(
        json.dumps({"prompt": "q", "resp": "so #### 4"})
        + "\n"
        + json.dumps({"prompt": "q2", "resp": "no answer"})
        + "\n"
    )
    code, _, err = run(["data", "preview", str(p), "--field", "question=prompt", "--field", "solution=resp"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0  # one line, no traceback
    assert "1 of 2 rows unusable" in err and "row 2" in err and "--lenient" in err
    code, stdout, _ = run(
        ["data", "preview", str(p), "--field", "question=prompt", "--field", "solution=resp", "--lenient"], capsys
    )
    assert code == 0 and "1/1 correct" in stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "preview", "missing.jsonl"], "error: missing.jsonl: no such file"),
        (["data", "preview", "synthetic:easyy"], "unknown synthetic preset 'easyy'. Did you mean 'easy'?"),
        (["data", "preview", "synthetic:easy?n=3", "--grader", "gsm9k"], "unknown grader 'gsm9k'"),
        (["data", "preview", "synthetic:easy?n=3", "--field", "question"], "must look like NAME=COLUMN"),
        (["data", "synth", "--n", "5", "--out", "x.txt"], "must be a .jsonl file"),
        (["data", "synth", "--n", "5", "--out", "x.jsonl", "--steps", "two"], "must be N or MIN-MAX"),
        (["data", "synth", "--n", "5", "--out", "x.jsonl", "--steps", "3-12"], "max_steps must be in 1..10"),
        (["data", "synth", "--n", "5", "--out", "x.jsonl", "--skills", "cooking"], "unknown skills"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.strip().count("\n") == 0


def test_preview_unknown_columns(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("a,b\n1,2\n")
    code, _, err = run(["data", "preview", str(p)], capsys)
    assert code == 2 and "no question column" in err and "available columns: a, b" in err


def test_preview_hub_offline(monkeypatch, capsys):
    import curator.data.loaders as loaders

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(loaders, "_hub_unreachable", lambda timeout=3.0: "huggingface.co:443: offline")
    code, _, err = run(["data", "preview", "openai/gsm8k", "--config", "main"], capsys)
    assert code == 2 and "hub is unreachable" in err and err.strip().count("\n") == 0


def test_missing_required_option_is_usage_error(capsys):
    code, _, err = run(["data", "synth", "--out", "x.jsonl"], capsys)
    assert code == 2 and "--n" in err


def test_a_reader_that_stops_reading_ends_quietly():
    """`curate data preview ... | head -1`: click exits 1 on the broken pipe, as a plain click
    command does, without blaming a plugin for calling sys.exit."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "curator.cli.main", "data", "preview", "synthetic:easy?n=300&seed=0", "--n", "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"=== ")
    proc.stdout.close()  # the reader goes away with ~300 examples still to print
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == ""
