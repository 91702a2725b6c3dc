"""Bad input to every command: exit code 2, one line naming the problem, no traceback, and no file
changed (docs/RELIABILITY.md).

Each case builds its inputs in a fresh directory, runs `curate` in-process through the same
`main()` the console script uses, and checks the four promises. Cases run before any model loads,
so the whole table takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from launching import tiny_recipe

from curator.cli.main import main

# a recipe that validates (tiny model, small synthetic data); cases break one thing in it
GOOD = {
    "name": "adv",
    "model": {"name": "tiny-random", "lora": None},
    "data": {
        "pool": "synthetic:easy?n=20&seed=1",
        "test": "synthetic:easy?n=4&seed=2",
        "seed_size": 4,
        "grader": "gsm8k",
    },
    "loop": {"rounds": 2, "budget": [2]},
    "strategies": [{"name": "iid"}],
}


def _recipe(d: Path, **changes) -> str:
    r = json.loads(json.dumps(GOOD))
    r["output_dir"] = str(d / "run")
    for dotted, value in changes.items():
        node = r
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return str(path)


def _write(d: Path, name: str, data: bytes | str) -> str:
    p = d / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def _plugin(d: Path, module: str, body: str) -> None:
    (d / f"{module}.py").write_text(body)


def _ledger_csv(d: Path, name: str = "led.csv", n_correct: str = "1") -> str:
    rows = [
        "example_id,checkpoint,n_correct,n_samples,perplexity",
        f"a,1,{n_correct},4,1.5",
        "a,2,2,4,1.2",
        "b,1,0,4,2.0",
        "b,2,1,4,1.4",
    ]
    return _write(d, name, "\n".join(rows) + "\n")


def _good_ledger(d: Path, name: str = "good.parquet") -> str:
    from curator.dynamics.ledger import Ledger

    led = Ledger.from_arrays(
        ["a", "b"], np.array([[1, 2], [0, 1]]), k=4, perplexity=np.array([[1.5, 1.2], [2.0, 1.4]]), p=1.105
    )
    return str(led.to_parquet(d / name))


def _bad_meta_ledger(d: Path, meta: str) -> str:
    import pyarrow.parquet as pq

    path = _good_ledger(d, "meta.parquet")
    table = pq.read_table(path)
    md = dict(table.schema.metadata)
    md[b"curator.ledger"] = meta.encode()
    pq.write_table(table.replace_schema_metadata(md), path)
    return path


def _run_dir_with(d: Path, corrupt: str) -> str:
    """A finished-looking run directory with one corrupt file (what `compare` reads back)."""
    rd = d / "run" / "iid" / "round-00"
    rd.mkdir(parents=True)
    (rd.parent / "run.json").write_text("{}")
    (rd / "DONE").write_text("")
    metrics = {"n_train": 4, "test_accuracy": 0.5, "round": 0}
    changed = {
        "string-accuracy": {**metrics, "test_accuracy": "0.5"},
        "accuracy-7": {**metrics, "test_accuracy": 7},
        "no-n_train": {"test_accuracy": 0.5, "round": 0},
    }
    (rd / "metrics.json").write_text(
        '{"n_train": 4, "test_accuracy": 0.5' if corrupt == "metrics" else json.dumps(changed.get(corrupt, metrics))
    )
    if corrupt == "empty-ledger":
        (rd / "ledger.parquet").write_bytes(b"")
    if corrupt == "checkpoints":
        (rd / "checkpoints.json").write_text('{"oops": true}')
    if corrupt == "recipe-scalar":
        (d / "run" / "curator-run.yaml").write_text("just text\n")
    return str(d / "run")


# (case id, builder(d) -> argv, words the one line must contain). The id says what is wrong.
CASES = [
    # ---- recipes: `validate` must refuse everything `run` would refuse before training (item 10)
    ("p-nan", lambda d: ["validate", _recipe(d, dynamics__p=float("nan"))], ["dynamics.p"]),
    ("p-nan-run", lambda d: ["run", _recipe(d, dynamics__p=float("nan"))], ["dynamics.p"]),
    ("dtype-float64", lambda d: ["validate", _recipe(d, model__dtype="float64")], ["model.dtype", "float64"]),
    (
        "synthetic-bad-option",
        lambda d: ["validate", _recipe(d, data__pool="synthetic:easy?n=5&max_steps=0")],
        ["data.pool", "max_steps"],
    ),
    (
        "synthetic-bad-preset",
        lambda d: ["validate", _recipe(d, data__test="synthetic:impossible")],
        ["data.test", "impossible"],
    ),
    (
        "grader-not-a-grader",
        lambda d: ["validate", _recipe(d, data__grader="collections:OrderedDict")],
        ["data.grader", "not a grader"],
    ),
    ("eval-samples-0", lambda d: ["validate", _recipe(d, evaluation__samples=0)], ["evaluation.samples"]),
    ("pool-size-negative", lambda d: ["validate", _recipe(d, data__pool_size=-1)], ["data.pool_size"]),
    ("seed-negative", lambda d: ["validate", _recipe(d, seed=-1)], ["seed"]),
    ("seed-too-big", lambda d: ["validate", _recipe(d, seed=2**32)], ["seed"]),
    (
        "pool-file-missing",
        lambda d: ["validate", _recipe(d, data__pool=str(d / "nope.jsonl"))],
        ["data.pool", "nope.jsonl"],
    ),
    ("tracking-scheme", lambda d: ["validate", _recipe(d, tracking={"uri": "foo://host/x"})], ["tracking.uri", "foo"]),
    ("tracking-scheme-run", lambda d: ["run", _recipe(d, tracking={"uri": "foo://host/x"})], ["tracking.uri", "foo"]),
    # --set into a value or into a list item (item 9)
    ("set-into-scalar", lambda d: ["validate", _recipe(d), "--set", "seed.x=1"], ["seed"]),
    ("set-into-list-item", lambda d: ["validate", _recipe(d), "--set", "loop.budget.0.x=1"], ["loop.budget.0"]),
    ("set-into-string", lambda d: ["validate", _recipe(d), "--set", "strategies.0.name.x=1"], ["strategies.0.name"]),
    ("set-list-index", lambda d: ["validate", _recipe(d), "--set", "strategies.5.name=iid"], ["strategies"]),
    # strategies: wrong-typed built-in parameters, plugin failures of any kind (items 9, 6)
    (
        "param-wrong-type-bool",
        lambda d: [
            "validate",
            _recipe(d, strategies=[{"name": "embedding-diversity", "params": {"cover_train": "no"}}]),
        ],
        ["cover_train"],
    ),
    (
        "param-wrong-type-number",
        lambda d: ["validate", _recipe(d, strategies=[{"name": "premem-threshold", "params": {"threshold": "high"}}])],
        ["threshold"],
    ),
    (
        "param-wrong-type-run",
        lambda d: ["run", _recipe(d, strategies=[{"name": "embedding-diversity", "params": {"eps": [1]}}])],
        ["eps"],
    ),
    (
        "plugin-import-raises",
        lambda d: (
            _plugin(d, "adv_plug_a", "raise RuntimeError('plugin broke')\n"),
            ["validate", _recipe(d, strategies=[{"name": "adv_plug_a:S"}])],
        )[1],
        ["adv_plug_a", "RuntimeError", "plugin broke"],
    ),
    (
        "plugin-syntax-error",
        lambda d: (
            _plugin(d, "adv_plug_b", "def (:\n"),
            ["validate", _recipe(d, strategies=[{"name": "adv_plug_b:S"}])],
        )[1],
        ["adv_plug_b", "SyntaxError"],
    ),
    (
        "plugin-init-raises",
        lambda d: (
            _plugin(
                d,
                "adv_plug_c",
                (
                    "from curator.strategy import Strategy\n"
                    "class S(Strategy):\n"
                    "    def __init__(self, n: int = 1):\n"
                    "        raise ValueError('bad n')\n"
                    "    def score(self, ctx):\n"
                    "        return None\n"
                ),
            ),
            ["validate", _recipe(d, strategies=[{"name": "adv_plug_c:S"}])],
        )[1],
        ["adv_plug_c", "ValueError", "bad n"],
    ),
    (
        "plugin-import-raises-run",
        lambda d: (
            _plugin(d, "adv_plug_d", "import json\njson.loads('{')\n"),
            ["run", _recipe(d, strategies=[{"name": "adv_plug_d:S"}])],
        )[1],
        ["adv_plug_d", "JSONDecodeError"],
    ),
    (
        "grader-plugin-init-raises",
        lambda d: (
            _plugin(d, "adv_plug_e", "class G:\n    def __init__(self):\n        1/0\n"),
            ["validate", _recipe(d, data__grader="adv_plug_e:G")],
        )[1],
        ["data.grader", "ZeroDivisionError"],
    ),
    # paths (item 6): labels and names are single folder names inside output_dir
    (
        "label-escapes",
        lambda d: ["validate", _recipe(d, strategies=[{"name": "iid", "label": "../../x"}])],
        ["label", "../../x"],
    ),
    ("label-dotdot", lambda d: ["run", _recipe(d, strategies=[{"name": "iid", "label": ".."}])], ["label"]),
    ("name-escapes", lambda d: ["validate", _recipe(d, name="../../escape", output_dir=None)], ["name"]),
    # files that are not UTF-8, directories where files belong, files where directories belong (item 9)
    (
        "recipe-not-utf8",
        lambda d: ["validate", _write(d, "latin.yaml", "name: caf\xe9\n".encode("latin-1"))],
        ["latin.yaml", "UTF-8"],
    ),
    ("recipe-is-dir", lambda d: ["validate", str(d)], ["directory"]),
    (
        "data-not-utf8",
        lambda d: ["data", "preview", _write(d, "bad.jsonl", b'{"question": "\xff"}\n')],
        ["bad.jsonl", "UTF-8"],
    ),
    (
        "data-not-utf8-run",
        lambda d: ["run", _recipe(d, data__pool=_write(d, "pool.jsonl", b'{"q": "\xff\xfe"}\n'))],
        ["pool.jsonl", "UTF-8"],
    ),
    ("output-under-a-file", lambda d: ["run", _recipe(d, output_dir=_write(d, "afile", "x") + "/run")], ["afile"]),
    (
        "synth-out-under-a-file",
        lambda d: ["data", "synth", "--n", "2", "--out", _write(d, "f", "x") + "/o.jsonl"],
        ["f"],
    ),
    # ledgers: corrupt inputs, fractional counts, wrong-typed metadata (items 5, 8, 9)
    ("ledger-show-corrupt", lambda d: ["ledger", "show", _write(d, "x.parquet", b"PAR1garbage")], ["x.parquet"]),
    ("ledger-show-bad-meta", lambda d: ["ledger", "show", _bad_meta_ledger(d, '{"p": "high"}')], ["p="]),
    ("ledger-show-meta-list", lambda d: ["ledger", "show", _bad_meta_ledger(d, "[1, 2]")], ["JSON object"]),
    (
        "ledger-import-bad-p",
        lambda d: ["ledger", "import", _ledger_csv(d), _good_ledger(d, "out.parquet"), "--p", "0.5"],
        ["--p"],
    ),
    (
        "ledger-import-fractional",
        lambda d: ["ledger", "import", _ledger_csv(d, n_correct="1.5"), str(d / "o.parquet")],
        ["n_correct", "whole"],
    ),
    (
        "ledger-import-fractional-k",
        lambda d: ["ledger", "import", _write(d, "a.npz", _npz(k=2.5)), str(d / "o.parquet")],
        ["k", "whole"],
    ),
    (
        "ledger-import-corrupt-npz",
        lambda d: ["ledger", "import", _write(d, "c.npz", b"PK\x03\x04broken"), str(d / "o.parquet")],
        ["c.npz"],
    ),
    (
        "ledger-import-corrupt-parquet",
        lambda d: ["ledger", "import", _write(d, "c.parquet", b"PAR1xx"), str(d / "o.parquet")],
        ["c.parquet"],
    ),
    (
        "ledger-import-corrupt-json",
        lambda d: ["ledger", "import", _write(d, "c.json", "{not json"), str(d / "o.parquet")],
        ["c.json"],
    ),
    (
        "ledger-import-not-utf8-csv",
        lambda d: ["ledger", "import", _write(d, "c.csv", b"example_id\xff,x\n"), str(d / "o.parquet")],
        ["c.csv"],
    ),
    # compare reads round files back
    ("compare-missing-dir", lambda d: ["compare", str(d / "nothing")], ["nothing"]),
    ("compare-corrupt-metrics", lambda d: ["compare", _run_dir_with(d, "metrics")], ["metrics.json"]),
    ("compare-bad-scheme", lambda d: ["compare", "--tracking-uri", "foo://x", "--experiment", "e"], ["foo"]),
    # ---- issue 22: values read back from files are inputs (curator/readback.py)
    # raw tracebacks on today's main
    (
        "set-on-scalar-recipe",
        lambda d: ["validate", _write(d, "five.yaml", "5\n"), "--set", "a=1"],
        ["five.yaml", "mapping"],
    ),
    ("name-empty", lambda d: ["validate", _recipe(d, name="")], ["name", "empty", "MLflow experiment"]),
    (
        "experiment-empty-run",
        lambda d: ["run", _recipe(d, tracking={"experiment": " "})],
        ["tracking.experiment", "empty"],
    ),
    (
        "predict-string-accuracy",
        lambda d: ["predict", _predict_dir(d, acc=("high", "0.5", "0.75"))],
        ["test_accuracy", "'high'", "not a number"],
    ),
    (
        "predict-checkpoints-json-malformed",
        lambda d: ["predict", _predict_dir(d, table=("checkpoints.json", '[{"checkpoint": 1,'))],
        ["checkpoints.json", "not valid JSON"],
    ),
    (
        "predict-checkpoints-json-bad-keys",
        lambda d: ["predict", _predict_dir(d, table=("checkpoints.json", '{"first": 0.5}'))],
        ["checkpoints.json", "keys 1, 2"],
    ),
    (
        "predict-checkpoints-csv-garbage",
        lambda d: ["predict", _predict_dir(d, table=("checkpoints.csv", b"\x00\x00"))],
        ["checkpoints.csv"],
    ),
    ("predict-n-boot-huge", lambda d: ["predict", _predict_dir(d), "--n-boot", str(10**12)], ["--n-boot", "100,000"]),
    (
        "ledger-import-string-counts",
        lambda d: [
            "ledger",
            "import",
            _write(d, "s.npz", _npz(n_correct=np.array([["x", "1"], ["0", "1"]]))),
            str(d / "o.parquet"),
        ],
        ["n_correct", "'x'", "not a number"],
    ),
    (
        "ledger-import-string-checkpoint",
        lambda d: [
            "ledger",
            "import",
            _write(d, "c.csv", "example_id,checkpoint,n_correct,n_samples,perplexity\na,one,1,4,1.5\n"),
            str(d / "o.parquet"),
        ],
        ["checkpoint", "'one'"],
    ),
    (
        "compare-string-accuracy",
        lambda d: ["compare", _run_dir_with(d, "string-accuracy")],
        ["metrics.json", "test_accuracy", "'0.5'"],
    ),
    (
        "compare-metrics-missing-key",
        lambda d: ["compare", _run_dir_with(d, "no-n_train")],
        ["metrics.json", "n_train", "round folder"],
    ),
    (
        "compare-recipe-not-mapping",
        lambda d: ["compare", _run_dir_with(d, "recipe-scalar")],
        ["curator-run.yaml", "mapping"],
    ),
    ("premem-seed-negative", lambda d: ["premem", "--seed", "-1"], ["--seed", "-1"]),
    ("measure-seed-negative", lambda d: ["measure", str(d), "--data", "synthetic", "--seed", "-1"], ["--seed", "-1"]),
    (
        "robustness-format-wrong-type",
        lambda d: _robustness(d, '{"p": 1.2, "format": "gsm8k"}'),
        ["format", "JSON object"],
    ),
    (
        "robustness-temperature-wrong-type",
        lambda d: _robustness(d, '{"p": 1.2, "sampling": {"temperature": "hot"}}'),
        ["sampling.temperature", "'hot'"],
    ),
    (
        "ledger-show-lazy-not-bool",
        lambda d: ["ledger", "show", _bad_meta_ledger(d, '{"lazy": "yes"}')],
        ["lazy", "true or false"],
    ),
    # silent wrong results on today's main
    ("predict-n-boot-negative", lambda d: ["predict", _predict_dir(d), "--n-boot", "-5"], ["--n-boot", "-5"]),
    (
        "predict-accuracy-percent",
        lambda d: ["predict", _predict_dir(d, acc=("70", "80", "90"))],
        ["test_accuracy", "[0, 1]", "100"],
    ),
    (
        "compare-accuracy-above-1",
        lambda d: ["compare", _run_dir_with(d, "accuracy-7")],
        ["metrics.json", "test_accuracy", "[0, 1]"],
    ),
    (
        "compare-zero-byte-ledger",
        lambda d: ["compare", _run_dir_with(d, "empty-ledger")],
        ["ledger.parquet", "0 bytes", "round folder"],
    ),
    (
        "compare-garbage-checkpoints",
        lambda d: ["compare", _run_dir_with(d, "checkpoints")],
        ["checkpoints.json", "list"],
    ),
    (
        "run-resume-without-resolved-recipe",
        lambda d: (_started_run(d, seed_ids="[]"), (d / "run" / "curator-run.yaml").unlink(), ["run", _recipe(d)])[2],
        ["curator-run.yaml", "missing"],
    ),
    (
        "run-resume-seed-ids-damaged",
        lambda d: (_started_run(d, seed_ids='{"a": 1}'), ["run", _recipe(d)])[1],
        ["seed_ids.json", "list of example ids"],
    ),
    (
        "run-resume-seed-ids-unknown",
        lambda d: (_started_run(d, seed_ids='["not-in-pool"]'), ["run", _recipe(d)])[1],
        ["seed_ids.json", "not-in-pool"],
    ),
    (
        "export-unknown-suffix",
        lambda d: ["export", str(d / "run"), "--out", str(d / "e.csv")],
        ["e.csv", "'.csv'", "jsonl"],
    ),
    # data loss on today's main: export replacing the run's own ledger
    (
        "export-into-the-run-dir",
        lambda d: [
            "export",
            _run_dir_with(d, "ok"),
            "--out",
            str(d / "run" / "iid" / "round-00" / "ledger.parquet"),
            "--overwrite",
        ],
        ["inside the run directory"],
    ),
    (
        "export-onto-the-run-dir",
        lambda d: ["export", _run_dir_with(d, "ok"), "--out", str(d / "run"), "--overwrite"],
        ["inside the run directory"],
    ),
    # security: state files are never followed through a symlink
    ("lock-is-a-symlink", lambda d: (_planted_state(d, "lock"), ["run", _recipe(d)])[1], [".curator/lock", "symlink"]),
    (
        "state-dir-is-a-symlink",
        lambda d: (_planted_state(d, "dir"), ["run", _recipe(d)])[1],
        [".curator", "not a directory"],
    ),
    (
        "pool-fingerprint-is-a-symlink",
        lambda d: (_planted_state(d, "pool"), ["run", _recipe(d)])[1],
        ["pool.sha1", "symlink"],
    ),
    # wrong exits on today's main
    (
        "synth-too-many",
        lambda d: ["data", "synth", "--n", str(10**12), "--out", str(d / "x.jsonl")],
        ["--n", "1,000,000"],
    ),
    (
        "plugin-sys-exit",
        lambda d: (
            _plugin(d, "adv_plug_exit", "import sys\nsys.exit(3)\n"),
            ["validate", _recipe(d, strategies=[{"name": "adv_plug_exit:S"}])],
        )[1],
        ["adv_plug_exit.py", "sys.exit(3)", "raise an exception"],
    ),
    (
        "plugin-sys-exit-run",
        lambda d: (
            _plugin(d, "adv_plug_exit2", "import sys\nsys.exit(0)\n"),
            ["run", _recipe(d, strategies=[{"name": "adv_plug_exit2:S"}])],
        )[1],
        ["adv_plug_exit2.py", "sys.exit(0)"],
    ),
    # validate misses on today's main: `validate` refuses what `run` refuses
    ("device-invalid", lambda d: ["validate", _recipe(d, model__device="gpu")], ["model.device", "'gpu'"]),
    (
        "test-set-is-the-pool",
        lambda d: ["validate", _recipe(d, data__test=GOOD["data"]["pool"])],
        ["data.test", "data.pool"],
    ),
    (
        "organism-unknown-setting",
        lambda d: ["validate", _recipe(d, model__name="organism?layerz=2")],
        ["model.name", "layerz"],
    ),
    (
        "organism-missing-file",
        lambda d: ["validate", _recipe(d, model__name="organism:nothere.yaml")],
        ["model.name", "nothere.yaml"],
    ),
]


def _predict_dir(d: Path, acc=("0.25", "0.5", "0.75"), table=None) -> str:
    """A `curate predict` run directory: a good ledger (checkpoints 1-3: enough points for a fit, so
    that what the case breaks is the only thing wrong) and a checkpoint table."""
    from curator.dynamics.ledger import Ledger

    rd = d / "prun"
    rd.mkdir(exist_ok=True)
    Ledger.from_arrays(
        ["a", "b"],
        np.array([[1, 2, 4], [0, 1, 3]]),
        k=4,
        perplexity=np.array([[1.5, 1.2, 1.05], [2.0, 1.4, 1.1]]),
        p=1.105,
    ).to_parquet(rd / "ledger.parquet")
    rows = "".join(f"{i},{a}\n" for i, a in enumerate(acc, 1))
    name, body = table or ("checkpoints.csv", "checkpoint,test_accuracy\n" + rows)
    _write(rd, name, body)
    return str(rd)


def _robustness(d: Path, meta: str) -> list[str]:
    return [
        "robustness",
        "--model",
        "tiny-random",
        "--ledger",
        _bad_meta_ledger(d, meta),
        "--data",
        "synthetic:easy?n=2",
    ]


def _started_run(d: Path, seed_ids: str) -> None:
    """A run directory as `curate run` left it after starting (its resolved recipe, its seed set)."""
    from curator.recipes import recipe_from_dict

    run = d / "run"
    run.mkdir()
    r = recipe_from_dict({**json.loads(json.dumps(GOOD)), "output_dir": str(run)})
    (run / "curator-run.yaml").write_text(r.to_yaml())
    (run / "seed_ids.json").write_text(seed_ids)


def _planted_state(d: Path, what: str) -> None:
    """A run directory whose state is planted as symlinks pointing at a file of the user's."""
    victim = d / "victim.txt"
    victim.write_text("the user's file\n")
    state = d / "run" / ".curator"
    if what == "dir":
        (d / "run").mkdir()
        (d / "elsewhere").mkdir()
        state.symlink_to(d / "elsewhere")
        return
    state.mkdir(parents=True)
    (state / ("lock" if what == "lock" else "pool.sha1")).symlink_to(victim)


def _npz(**arrays) -> bytes:
    import io

    base = {
        "example_ids": np.array(["a", "b"]),
        "n_correct": np.array([[1, 2], [0, 1]]),
        "perplexity": np.array([[1.5, 1.2], [2.0, 1.4]]),
    }
    base.update({k: np.asarray(v) for k, v in arrays.items()})
    buf = io.BytesIO()
    np.savez(buf, **base)
    return buf.getvalue()


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(d.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(case, tmp_path, monkeypatch, capsys):
    name, build, words = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CURATOR_DEBUG", raising=False)
    argv = build(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 2, (name, out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    after = _snapshot(tmp_path)
    assert after == before, f"{name} changed files: {sorted(set(after.items()) ^ set(before.items()))}"


def test_validate_warns_about_trust_remote_code(tmp_path, capsys):
    main(["validate", _recipe(tmp_path, model__trust_remote_code=True)])
    out = capsys.readouterr().out
    assert "note: model.trust_remote_code is true" in out and "runs Python code" in out


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import curator.run

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(curator.run, "run_recipe", interrupted)
    path = _recipe(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", path, "--quiet"])
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert f"rerun `curate run {path} --quiet` to resume" in err and "aborted" not in err


def test_unknown_errors_keep_their_traceback(tmp_path, monkeypatch):
    """A bug is not a user error: it must not be hidden behind a one-liner."""
    import curator.run

    def bug(*a, **kw):
        raise KeyError("internal")

    monkeypatch.setattr(curator.run, "run_recipe", bug)
    with pytest.raises(KeyError):
        main(["run", _recipe(tmp_path), "--quiet"])


def test_strategy_params_are_converted_like_recipe_fields():
    from curator.strategy import build_strategy

    s = build_strategy("uncertainty", {"n": 3.0})  # YAML's 3.0 is a whole number: accepted as int
    assert s.n == 3 and isinstance(s.n, int)


# ---- the MLflow store (items 1, 3, 6): made whole or not at all, rebuilt when unusable


def _half_made_store(path: Path) -> None:
    """A store whose migration stopped part way (the state a Ctrl-C during creation left)."""
    import sqlite3

    import mlflow.store.db.utils  # noqa: F401  (imports the table definitions below)
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    from curator.tracking.mlflow_store import _client

    # spelled with "..": MLflow caches a store per URI string, and the code under test must open
    # this file afresh, as a later `curate run` process would
    other_spelling = f"{path.parent}/../{path.parent.name}/{path.name}"
    _client("sqlite:///" + other_spelling).search_experiments(max_results=1)
    con = sqlite3.connect(path)
    # the initial tables are there, a later migration's table and the version stamp are not
    late = sorted(set(Base.metadata.tables) - set(InitialBase.metadata.tables))
    con.execute(f"DROP TABLE {late[-1]}")
    con.execute("DROP TABLE alembic_version")
    con.commit()
    con.close()


def test_half_made_store_in_the_run_dir_is_rebuilt(tmp_path):
    from curator.errors import CuratorError
    from curator.tracking.mlflow_store import check_reachable, default_tracking_uri

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _half_made_store(run_dir / "mlflow.db")
    uri = default_tracking_uri(run_dir)
    # a store the user named is theirs: say what is wrong and what to do, touch nothing
    shutil.copy(run_dir / "mlflow.db", tmp_path / "theirs.db")
    with pytest.raises(CuratorError, match="cannot be opened .*move it away"):
        check_reachable("sqlite:///" + str(tmp_path / "theirs.db"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "theirs.db"]
    notes = check_reachable(uri, rebuild_for=run_dir)
    assert len(notes) == 1 and "is damaged" in notes[0] and "rebuilt from the round files" in notes[0]
    assert check_reachable(uri, rebuild_for=run_dir) == []  # the new store is whole
    assert len(list(run_dir.glob("mlflow.db.old-*"))) == 1  # the damaged one is kept aside, not deleted


def test_store_creation_interrupted_leaves_no_store(tmp_path, monkeypatch):
    from curator.tracking import mlflow_store

    real = mlflow_store._client

    def interrupted(uri):
        if ".tmp-" in uri:
            real(uri)  # tables made in the temporary file, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return real(uri)

    monkeypatch.setattr(mlflow_store, "_client", interrupted)
    uri = mlflow_store.default_tracking_uri(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        mlflow_store.check_reachable(uri, rebuild_for=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half-made mlflow.db nor a temporary file
    monkeypatch.setattr(mlflow_store, "_client", real)
    assert mlflow_store.check_reachable(uri, rebuild_for=tmp_path) == []


def test_run_missing_from_the_store_is_made_again_and_quotes_need_no_escaping(tmp_path):
    from curator.tracking.mlflow_store import MlflowRun, check_reachable, default_tracking_uri

    run_dir = tmp_path / "it's here"
    uri = default_tracking_uri(run_dir)
    check_reachable(uri, rebuild_for=run_dir)
    tags = {"curator.run_dir": str(run_dir / "o'brien`s"), "strategy": "iid"}
    first = MlflowRun(uri, "exp 'quoted'", artifact_root=run_dir / "mlartifacts")
    rid = first.open(None, "o'brien", params={"a": "1"}, tags=tags)
    assert first.created
    # killed before run.json was written: the run is found again by its tag, not duplicated
    again = MlflowRun(uri, "exp 'quoted'", artifact_root=run_dir / "mlartifacts")
    assert again.open(None, "o'brien", params={"a": "1"}, tags=tags) == rid and not again.created
    # run.json names a run this store does not hold (another tracking.uri, a deleted store)
    other = MlflowRun(uri, "exp 'quoted'", artifact_root=run_dir / "mlartifacts")
    new = other.open("0123456789abcdef0123456789abcdef", "x", params={}, tags={"strategy": "x"})
    assert new != rid and other.created


# ---- the run directory (items 4, 5, 7, 8, 9): the user's files, the lock, the seed set, the pool

USER_RECIPE = "# my recipe: these comments are mine\nname: mine\n"


def test_run_dir_guarantees(tmp_path, monkeypatch, capsys):
    """One workspace, several promises (one MLflow store is slow to make):
    the user's recipe.yaml beside output_dir '.' is untouched; the seed set avoids test examples;
    a second run on the directory is refused by the lock; a pool that changed under a resumed run
    is refused; saved weights are read with weights_only=True and a crafted pickle does not run."""
    import pickle

    from curator.data.loaders import load_examples, save_examples
    from curator.run import prepare_workspace

    monkeypatch.chdir(tmp_path)
    pool = load_examples("synthetic:easy?n=12&seed=1")
    save_examples(pool, tmp_path / "pool.jsonl")
    save_examples(pool[:8], tmp_path / "test.jsonl")  # 8 of the 12 pool examples are test examples
    (tmp_path / "recipe.yaml").write_text(USER_RECIPE)
    d = json.loads(json.dumps(GOOD))
    d.update(
        output_dir=".",
        data={"pool": "pool.jsonl", "test": "test.jsonl", "seed_size": 4, "grader": "gsm8k"},
        loop={"rounds": 2, "budget": 2, "continue_training": True},
    )
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(d))
    ws = prepare_workspace(recipe_from_dict_(d), progress=False)

    assert (tmp_path / "recipe.yaml").read_text() == USER_RECIPE  # item 5
    assert (tmp_path / "curator-run.yaml").exists()
    test_ids = {e.id for e in pool[:8]}
    assert len(ws.seed_ids) == 4 and not set(ws.seed_ids) & test_ids  # item 8: the 4 non-test examples

    def refused(words):
        before = _snapshot(tmp_path)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(["run", "mine.yaml", "--quiet"])
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if x.strip() and " INFO " not in x]
        assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert all(w in lines[0] for w in words), lines[0]
        assert _snapshot(tmp_path) == before

    refused(["in use by another `curate run`", ".curator/lock"])  # item 4

    # item 7: saved weights are never unpickled as code
    import torch

    from curator.recipes import StrategySpec
    from loops.active import ActiveLoop

    rd = tmp_path / "iid" / "round-00"
    rd.mkdir(parents=True)
    (rd / "metrics.json").write_text(json.dumps({"round": 0, "n_train": 4, "test_accuracy": 0.0}))
    (rd / "next_train_ids.json").write_text(json.dumps(ws.seed_ids))
    (rd / "DONE").write_text("")
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (rd / "trainable_state.pt").write_bytes(pickle.dumps({"w": Payload()}))
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: (calls.append(kw), real_load(*a, **kw))[1])
    from curator.errors import CuratorError

    with pytest.raises(CuratorError, match="trainable_state.pt cannot be read as saved weights"):
        ActiveLoop(ws, StrategySpec(name="iid")).setup()
    assert calls and calls[0].get("weights_only") is True and not marker.exists()
    shutil.rmtree(tmp_path / "iid")
    ws.release()

    # item 9: the pool file changed under the run
    changed = pool[:11] + [load_examples("synthetic:easy?n=13&seed=1")[12]]
    save_examples(changed, tmp_path / "pool.jsonl")
    refused(["data.pool", "changed since this run started"])


def recipe_from_dict_(d):
    from curator.recipes import recipe_from_dict

    return recipe_from_dict(d)


def test_seed_set_from_a_pool_that_is_the_test_set_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = _recipe(tmp_path, data__test=GOOD["data"]["pool"])
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", path])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "also in data.test" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_a_strategy_returning_fewer_than_k_is_its_error():
    import numpy as np

    from curator.data.loaders import load_examples
    from curator.errors import StrategyError
    from curator.strategy import SelectionContext, Strategy, run_selection

    class Short(Strategy):
        name = "short"
        needs = frozenset()

        def select(self, ctx, k):
            return ctx.ids[:1]

    pool = load_examples("synthetic:easy?n=6&seed=1")
    ctx = SelectionContext(
        pool=pool, train=[], ledger=None, signals=None, rng=np.random.default_rng(0), round=0, p=1.105, source=None
    )
    with pytest.raises(StrategyError, match="'short' returned 1 ids for k=3 while 6 candidates remain"):
        run_selection(Short(), ctx, 3)


def test_carried_weights_must_fit_the_model():
    from curator.engine import fresh_model
    from curator.errors import DataError
    from curator.models import load_model

    base = load_model("tiny-random")
    state = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    fresh_model(base, init_state=state)  # the model's own weights fit
    with pytest.raises(DataError, match="1 unknown"):
        fresh_model(base, init_state={**state, "lm_head.extra": state[next(iter(state))]})
    del state[next(iter(state))]
    with pytest.raises(DataError, match="1 missing"):
        fresh_model(base, init_state=state)


@pytest.mark.parametrize(
    "err,words",
    [
        (
            OSError(28, "No space left on device", "/data/run/ledger.parquet"),
            ["ledger.parquet", "No space", "free some space"],
        ),
        (PermissionError(13, "Permission denied", "/data/run"), ["/data/run", "Permission denied", "permissions"]),
        (OSError(30, "Read-only file system", "/mnt/ro/run"), ["/mnt/ro/run", "read-only"]),
    ],
)
def test_os_errors_on_the_users_paths_are_one_line(err, words):
    from curator.errors import user_error_line

    line = user_error_line(err)
    assert line is not None and "\n" not in line and all(w in line for w in words), line


# ---- MLflow (issue 22 item 3): one store and one experiment per multi-seed run, read back with
# MLflow's own client at the URI the README's `mlflow ui --backend-store-uri` command names

SEEDS_RECIPE = tiny_recipe(name="adv-seeds", seeds=[3, 4])


def _store_contents(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    exp = client.get_experiment_by_name(experiment)
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.run_name)
    return exps, exp, runs


def test_the_readme_mlflow_command_names_the_store_the_demo_writes(tmp_path, monkeypatch):
    """The README's `mlflow ui --backend-store-uri ...` command, as written, is the one store the
    multi-seed demo writes (`curate run demo` from the checkout: every seed logs there, into one
    experiment named after the recipe); the test below checks that `run_seeds` logs every seed to
    `store_uri` and reads the store back with MLflow's client."""
    import re

    from curator.recipes import load_recipe
    from curator.seeds import store_uri

    root = Path(__file__).resolve().parents[1]
    commands = re.findall(r"^mlflow ui --backend-store-uri (\S+)$", (root / "README.md").read_text(), flags=re.M)
    assert len(commands) == 1, commands
    demo = load_recipe(root / "recipes" / "demo.yaml")
    assert demo.seeds and len(demo.seeds) > 1 and demo.tracking.uri is None  # multi-seed, the default store
    monkeypatch.chdir(tmp_path)  # $PWD: where `curate run demo` runs
    assert commands[0].replace("$PWD", str(tmp_path)) == store_uri(demo)
    assert demo.experiment == "demo"


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_multi_seed_run_is_one_mlflow_experiment_the_readme_command_opens(tmp_path):
    from curator.recipes import recipe_from_dict
    from curator.seeds import run_seeds, store_uri
    from curator.tracking.compare import compare_mlflow

    r = recipe_from_dict({**SEEDS_RECIPE, "output_dir": str(tmp_path / "run")})
    out = run_seeds(r, progress=False, echo=lambda *_: None)
    # the README's command: mlflow ui --backend-store-uri sqlite:///$PWD/runs/<name>/mlflow.db
    uri = "sqlite:///" + str(tmp_path / "run" / "mlflow.db")
    assert out.tracking_uri == uri == store_uri(r)
    assert not list(tmp_path.glob("run/seed-*/mlflow.db"))  # no per-seed stores any more
    exps, exp, runs = _store_contents(uri, "adv-seeds")
    assert [e.name for e in exps] == ["adv-seeds"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on model training
    assert [(x.info.run_name, x.data.tags["seed"], x.data.tags["strategy_label"]) for x in runs] == [
        ("iid seed 3", "3", "iid"),
        ("iid seed 4", "4", "iid"),
    ]
    for x in runs:  # each round's training set is the run's dataset input: 4 examples, then 4 + 4
        inputs = sorted(x.inputs.dataset_inputs, key=lambda d: d.dataset.name)
        assert [d.dataset.name for d in inputs] == ["iid round 0", "iid round 1"]
        assert [json.loads(d.dataset.profile)["num_rows"] for d in inputs] == [4, 8]
        assert all(t.key == "mlflow.data.context" and t.value == "training" for d in inputs for t in d.tags)
        seed_ids = json.loads((tmp_path / "run" / f"seed-{x.data.tags['seed']}" / "seed_ids.json").read_text())
        assert inputs[0].dataset.digest == hashlib.sha1("\n".join(seed_ids).encode()).hexdigest()[:12]
    # `curate compare` reads the one experiment back: strategy x seed
    assert "mean over 2 seeds" in compare_mlflow(uri, "adv-seeds", out_dir=tmp_path / "cmp").table
    # resume: nothing is duplicated (runs, inputs)
    run_seeds(r, progress=False, echo=lambda *_: None)
    _, _, again = _store_contents(uri, "adv-seeds")
    assert [x.info.run_id for x in again] == [x.info.run_id for x in runs]
    assert [len(x.inputs.dataset_inputs) for x in again] == [2, 2]
    # a store lost (or a run made when each seed had its own store): made anew from the round files
    from curator.tracking.mlflow_store import _release

    (tmp_path / "run" / "mlflow.db").unlink()
    _release(uri)  # MLflow caches one sqlite engine per URI in a process; a later `curate run` is a new one
    run_seeds(r, progress=False, echo=lambda *_: None)
    _, exp2, rebuilt = _store_contents(uri, "adv-seeds")
    assert [x.info.run_name for x in rebuilt] == ["iid seed 3", "iid seed 4"]
    assert exp2.tags["mlflow.experimentKind"] == "custom_model_development"
    assert [len(x.data.metrics) > 0 and len(x.inputs.dataset_inputs) for x in rebuilt] == [2, 2]


# ---- a resumed run: stray temporaries are removed, a damaged finished round is refused by name


def test_resume_removes_stray_temporaries_and_refuses_a_damaged_round(tmp_path, monkeypatch):
    from curator.errors import CuratorError
    from curator.recipes import StrategySpec
    from curator.run import prepare_workspace
    from loops.active import ActiveLoop

    monkeypatch.chdir(tmp_path)
    d = json.loads(json.dumps(GOOD))
    d["output_dir"] = str(tmp_path / "run")
    rd = tmp_path / "run" / "iid" / "round-00"
    rd.mkdir(parents=True)
    # what kills left behind: a half-made store, a parquet write and an atomic json write cut short
    stray = [
        tmp_path / "run" / ".mlflow.db.tmp-4242-0badc0de",
        rd / ".ledger.parquet.tmp4242",
        rd / ".metrics.json.x1y2z3.tmp",
    ]
    for p in stray:
        p.write_bytes(b"\0" * 1000)
    (rd / "notes.tmp").write_text("a user's file: not curator's pattern")
    ws = prepare_workspace(recipe_from_dict_(d), progress=False)
    try:
        assert [p.exists() for p in stray] == [False, False, False]
        assert (rd / "notes.tmp").exists()

        def plant(**files):
            shutil.rmtree(rd, ignore_errors=True)
            rd.mkdir()
            base = {
                "metrics.json": json.dumps({"round": 0, "n_train": 4, "test_accuracy": 0.5}),
                "next_train_ids.json": json.dumps(ws.seed_ids),
                "DONE": "",
            }
            for name, body in {**base, **files}.items():
                (rd / name).write_bytes(body if isinstance(body, bytes) else body.encode())

        damage = [
            ({"ledger.parquet": b""}, "ledger.parquet is empty (0 bytes"),
            ({"ledger.parquet": b"PAR1 not parquet"}, "ledger.parquet is not a readable Parquet file"),
            ({"metrics.json": '{"round": 0}'}, "metrics.json has no 'n_train'"),
            ({"metrics.json": '{"n_train": "four"}'}, "metrics.json: n_train is 'four'"),
            (
                {"metrics.json": '{"n_train": 4, "test_accuracy": 1.5}'},
                "test_accuracy is 1.5; expected a number in [0, 1]",
            ),
            ({"next_train_ids.json": '{"a": 1}'}, "next_train_ids.json must hold a JSON list of example ids"),
            ({"next_train_ids.json": '["x", "x"]'}, "next_train_ids.json names 1 example id(s) twice"),
            ({"checkpoints.json": '[{"checkpoint": "one"}]'}, "checkpoints.json: record 0 checkpoint is 'one'"),
        ]
        for files, words in damage:
            plant(**files)
            with pytest.raises(CuratorError) as e:
                ActiveLoop(ws, StrategySpec(name="iid")).setup()
            msg = str(e.value)
            assert words in msg and str(rd) in msg and "redoes that round" in msg and "\n" not in msg, msg
    finally:
        ws.release()
