"""`curate measure` on what a user points it at: the untrained model as step 0, and weights files
that are damaged or carry code (one line naming the file, never a raw library error)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from curator.errors import ConfigError, DataError
from curator.measure import CheckpointLoader, find_checkpoints, read_checkpoint

DATA = "synthetic:easy?n=4&seed=0"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny model saved as a plain model directory (what `save_pretrained` writes)."""
    from curator.models import load_model

    root = tmp_path_factory.mktemp("saved")
    lm = load_model("tiny-random")
    lm.model.save_pretrained(root / "base")
    lm.tokenizer.save_pretrained(root / "base")
    return root


def _run_with(saved, tmp_path, steps):
    """A run directory: checkpoint-<step> copies of the saved model, with trainer state."""
    for s in steps:
        d = tmp_path / "run" / f"checkpoint-{s}"
        shutil.copytree(saved / "base", d)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": s, "epoch": s / 10, "log_history": []}))
    return tmp_path / "run"


def test_a_plain_model_directory_is_step_0(saved, tmp_path):
    base = read_checkpoint(saved / "base")
    assert (base.step, base.epoch, base.metrics) == (0, 0.0, {})
    run = _run_with(saved, tmp_path, [10, 20])
    # the base model first, then the run's checkpoints: the step-0 point of every curve
    assert [c.step for c in find_checkpoints([saved / "base", run])] == [0, 10, 20]


def test_step_option_names_the_step_of_one_directory(saved, tmp_path):
    run = _run_with(saved, tmp_path, [10])
    (ck,) = find_checkpoints([run / "checkpoint-10"], step=0)
    assert (ck.step, ck.epoch, ck.metrics) == (0, 0.0, {})
    (ck,) = find_checkpoints([saved / "base"], step=7)
    assert ck.step == 7 and math.isnan(ck.epoch)
    with pytest.raises(ConfigError, match="exactly one checkpoint or model directory"):
        find_checkpoints([run], step=0)  # a run directory's checkpoints record their own steps
    with pytest.raises(ConfigError, match="exactly one"):
        find_checkpoints([saved / "base", run / "checkpoint-10"], step=0)
    with pytest.raises(ConfigError, match="integer >= 0"):
        find_checkpoints([saved / "base"], step=-1)


def test_curate_measure_step_0_on_the_base_model(saved, tmp_path, capsys):
    from curator.cli.main import main
    from curator.dynamics.ledger import read_ledger

    out = tmp_path / "l.parquet"
    args = ["measure", str(saved / "base"), "--step", "0", "--data", DATA, "--samples", "1"]
    main([*args, "--max-new-tokens", "4", "--out", str(out), "--quiet"])
    assert "(steps 0)" in capsys.readouterr().out
    led = read_ledger(out)
    assert led.df["step"].tolist() == [0] * 4 and led.df["epoch"].tolist() == [0.0] * 4
    assert led.checkpoints == [1]


def test_damaged_safetensors_is_one_line_naming_the_file(saved, tmp_path):
    d = tmp_path / "checkpoint-5"
    shutil.copytree(saved / "base", d)
    (d / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    with pytest.raises(DataError) as e:
        CheckpointLoader().load(read_checkpoint(d))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{d / 'model.safetensors'}: the weights file is damaged")


def test_a_bin_that_carries_code_is_refused_in_one_line_and_runs_nothing(saved, tmp_path):
    import torch

    d = tmp_path / "checkpoint-5"
    shutil.copytree(saved / "base", d)
    os.remove(d / "model.safetensors")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model.embed_tokens.weight": Payload()}, d / "pytorch_model.bin")
    with pytest.raises(DataError) as e:
        CheckpointLoader().load(read_checkpoint(d))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{d / 'pytorch_model.bin'}: refused to load")
    assert not marker.exists()  # weights_only held: no code ran


def test_curate_measure_on_a_damaged_checkpoint_exits_2_with_one_line(saved, tmp_path, capsys):
    from curator.cli.main import main

    run = _run_with(saved, tmp_path, [10])
    (run / "checkpoint-10" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(SystemExit) as e:
        main(["measure", str(run), "--data", DATA, "--samples", "1", "--out", str(tmp_path / "l.parquet"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint-10/model.safetensors" in err
    assert not (tmp_path / "l.parquet").exists()
