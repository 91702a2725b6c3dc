"""The console: one progress line per phase, library warnings out of normal output, a short summary."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator import console
from curator.console import _QUIET_ENV, LIBRARIES, echo, progress, quiet_libraries, set_verbose

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_console(monkeypatch):
    """Undo what quiet_libraries does to the process: environment, logger levels, open bars."""
    for key in [*_QUIET_ENV, "PYTHONWARNINGS"]:
        monkeypatch.delenv(key, raising=False)
    levels = {name: logging.getLogger(name).level for name in [*LIBRARIES, "curator"]}
    monkeypatch.setattr(console, "_open", [])
    monkeypatch.setattr(console, "_verbose", False)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_a_phase_inside_a_phase_shares_its_line(clean_console):
    out = io.StringIO()
    with progress(total=2, desc="finetune", unit="step", file=out, mininterval=0) as outer:
        outer.set_postfix(loss="4.2000")
        inner = progress(total=4, desc="sampling @ checkpoint 1", unit="sample", leave=False)
        assert not hasattr(inner, "fp")  # no second tqdm bar: nothing else writes to the terminal
        inner.update(3)
        assert outer.postfix == "loss=4.2000, sampling @ checkpoint 1 3/4"
        deeper = progress(range(2), desc="embedding")
        assert list(deeper) == [0, 1]  # iterating a nested phase yields the items and closes it
        assert outer.postfix == "loss=4.2000, sampling @ checkpoint 1 3/4"
        inner.update(1)
        inner.close()
        assert outer.postfix == "loss=4.2000"  # back to the outer phase
        outer.update(2)
    text = out.getvalue()
    assert "sampling @ checkpoint 1 3/4" in text and "embedding 1/2" in text
    assert console._open == []
    # after the outer phase closed, a new phase draws its own bar again
    bar = progress(total=1, desc="next", file=io.StringIO())
    assert hasattr(bar, "fp")
    bar.close()


def test_a_disabled_outer_bar_does_not_capture_inner_phases(clean_console):
    outer = progress(total=3, desc="finetune", disable=True)  # e.g. a non-main DDP process
    inner = progress(total=2, desc="sampling", file=io.StringIO())
    assert hasattr(inner, "fp") and inner.desc == "sampling"
    inner.close()
    outer.close()


def test_echo_goes_to_stdout_between_bars(clean_console, capsys):
    echo("[iid] round 0: n=8")
    echo("problem", err=True)
    got = capsys.readouterr()
    assert got.out == "[iid] round 0: n=8\n" and got.err == "problem\n"


def test_quiet_libraries_silences_library_warnings_and_logs_only(clean_console):
    with warnings.catch_warnings(record=True) as seen:
        quiet_libraries()
        warnings.warn_explicit(
            "`past_key_values` is deprecated",
            FutureWarning,
            "generation/utils.py",
            1,
            module="transformers.generation.utils",
        )
        warnings.warn_explicit(
            "old torch thing", UserWarning, "torch/nn/modules/module.py", 1, module="torch.nn.modules.module"
        )
        warnings.warn_explicit("curator's own", UserWarning, "curator/run.py", 1, module="curator.run")
    assert [str(w.message) for w in seen] == ["curator's own"]
    assert logging.getLogger("transformers").level == logging.ERROR
    assert logging.getLogger("mlflow").level == logging.ERROR
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ["MLFLOW_LOGGING_LEVEL"] == "ERROR"


def test_quiet_leaves_a_users_own_setting_alone(clean_console, monkeypatch):
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    quiet_libraries()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def test_verbose_shows_library_warnings(clean_console):
    with warnings.catch_warnings(record=True) as seen:
        set_verbose(True)
        warnings.warn_explicit(
            "`past_key_values` is deprecated",
            FutureWarning,
            "generation/utils.py",
            1,
            module="transformers.generation.utils",
        )
    assert [str(w.message) for w in seen] == ["`past_key_values` is deprecated"]
    assert console.is_verbose() and logging.getLogger("transformers").level == logging.NOTSET


def test_cli_verbose_flag_and_version(clean_console):
    from curator.cli.main import cli

    res = CliRunner().invoke(cli, ["--verbose", "validate", "demo"])
    assert res.exit_code == 0, res.output
    assert console.is_verbose()
    res = CliRunner().invoke(cli, ["validate", "demo"])
    assert res.exit_code == 0 and not console.is_verbose()
    res = CliRunner().invoke(cli, ["--version"])
    assert res.output.strip() == "curate, version 0.1.0"


def test_final_summary_is_short_and_exact():
    from curator.cli.run import final_summary
    from curator.run import RunSummary

    s = RunSummary(
        run_dir=Path("/nonexistent/run"),
        tracking_uri="sqlite:////r/mlflow.db",
        experiment="demo",
        strategies={
            "iid": {"final": {"n_train": 32, "test_accuracy": 0.21875, "premem_acc": 0.4}},
            "premem-threshold": {
                "final": {"n_train": 20, "test_accuracy": 0.28125, "premem_acc": 0.55},
                "stopped_reason": "pool exhausted",
            },
        },
        curves_png=Path("/nonexistent/run/curves.png"),
    )
    assert final_summary(s) == textwrap.dedent("""\
          strategy          examples  test acc  PreMemAcc
          iid                     32     0.219      0.400
          premem-threshold        20     0.281      0.550  best  stopped early: pool exhausted
        curves: /nonexistent/run/curves.png
        MLflow: mlflow ui --backend-store-uri sqlite:////r/mlflow.db  (experiment 'demo')""")
    s.strategies["iid"]["final"]["test_accuracy"] = 0.28125  # a tie: nobody is marked best
    assert " best" not in final_summary(s)


QUIET_CHECK = """
import sys
from curator.console import set_verbose
set_verbose(sys.argv[1] == "verbose")
import torch
from curator.models import load_model
from curator.tracking.mlflow_store import default_tracking_uri
m = load_model("tiny-random").model
ids = torch.tensor([[1, 2, 3]])
m(input_ids=ids, past_key_values=None, use_cache=False)  # deprecated argument in transformers 5.x
import mlflow
mlflow.set_tracking_uri("sqlite:///" + sys.argv[2] + "/mlflow.db")  # logs INFO while creating tables
mlflow.get_experiment_by_name("x")
print("ok")
"""


@pytest.mark.slow
def test_real_libraries_are_quiet_unless_verbose(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*_QUIET_ENV, "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(ROOT)
    runs = {}
    for mode in ("quiet", "verbose"):
        d = tmp_path / mode
        d.mkdir()
        runs[mode] = subprocess.run(
            [sys.executable, "-c", QUIET_CHECK, mode, str(d)], capture_output=True, text=True, env=env, timeout=300
        )
        assert runs[mode].returncode == 0, runs[mode].stderr
        assert runs[mode].stdout == "ok\n"
    assert runs["quiet"].stderr == ""
    assert "Creating initial MLflow database tables" in runs["verbose"].stderr
    assert "FutureWarning" in runs["verbose"].stderr
