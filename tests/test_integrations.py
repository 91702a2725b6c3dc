"""Bring your own trainer: PreMemCallback inside TRL's SFTTrainer, `curate measure` over saved
checkpoints (full models and peft adapters), and their agreement with curator's own finetune path."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from evenlen import EvenLength
from launching import launch_cmd

from curator.data.format import PromptFormat
from curator.data.loaders import load_examples
from curator.dynamics.settings import MeasureSettings
from curator.errors import ConfigError, CuratorError, DataError
from curator.measure import CheckpointLoader, checkpoint_metrics, find_checkpoints, measure_checkpoints
from curator.sampling.base import SamplingParams

DATA = "synthetic:easy?n=8&seed=0"
PARAMS = SamplingParams(max_new_tokens=12, seed=5)  # the paper's T=0.8 / top_p=0.95
K = 3


@pytest.fixture
def fresh_accelerate_state():
    """A Trainer leaves accelerate's process-wide state (e.g. bf16 mixed precision) behind; later
    curator finetune calls in this pytest process would inherit it. Clear it after each TRL test."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def examples():
    return load_examples(DATA)


# -- pure helpers ------------------------------------------------------------------------------


def test_checkpoint_metrics_take_the_last_logged_loss_at_or_before_the_step():
    history = [
        {"loss": 3.0, "grad_norm": 1.5, "learning_rate": 1e-3, "step": 2},
        {"premem_acc": 0.25, "step": 2},  # the callback's own entries carry no loss
        {"loss": 2.0, "grad_norm": 0.5, "learning_rate": 5e-4, "step": 4},
        {"loss": 1.0, "step": 6},
    ]
    assert checkpoint_metrics(history, 5) == {"train_loss": 2.0, "grad_norm": 0.5, "learning_rate": 5e-4}
    assert checkpoint_metrics(history, 6) == {"train_loss": 1.0}
    assert checkpoint_metrics(history, 1) == {}


def test_planned_checkpoints_follow_the_save_strategy():
    from curator.integrations.trainer import planned_checkpoints

    state = SimpleNamespace(num_train_epochs=3, max_steps=25, save_steps=10)
    assert planned_checkpoints(SimpleNamespace(save_strategy="epoch"), state, "save") == 3
    # saves at 10 and 20, and Trainer's final save at 25
    assert planned_checkpoints(SimpleNamespace(save_strategy="steps", save_steps=10), state, "save") == 3
    state.save_steps = 5
    assert planned_checkpoints(SimpleNamespace(save_strategy="steps", save_steps=5), state, "save") == 5
    assert planned_checkpoints(SimpleNamespace(save_strategy="best"), state, "save") is None
    assert planned_checkpoints(SimpleNamespace(save_strategy="steps"), state, "epoch") == 3


def test_without_autocast_swaps_in_the_plain_forward_and_restores_the_wrapper():
    import torch

    from curator.integrations.trainer import without_autocast

    model = torch.nn.Linear(2, 2)
    plain = model.forward
    model._original_forward = plain
    model.forward = lambda x: "wrapped"
    with without_autocast(model) as m:
        assert m.forward is plain
    assert model.forward(None) == "wrapped"
    bare = torch.nn.Linear(2, 2)
    with without_autocast(bare):
        assert "forward" not in bare.__dict__


def test_bad_callback_settings_are_reported_at_once(examples):
    from curator.integrations import PreMemCallback

    with pytest.raises(ConfigError) as e:
        PreMemCallback(examples, measure=MeasureSettings(k=0), on="step", source="checkpoint")
    assert "k" in str(e.value) and "on must be" in str(e.value) and "3 problems" in str(e.value)


# -- checkpoint discovery: bad input -------------------------------------------------------------


def _fake_ckpt(path: Path, step: int, epoch: float, adapter=False):
    path.mkdir(parents=True)
    (path / ("adapter_config.json" if adapter else "config.json")).write_text("{}")
    (path / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": epoch, "log_history": [{"loss": 1.5, "step": step}]})
    )


def test_find_checkpoints_orders_by_step_and_reads_trainer_state(tmp_path):
    for step in (10, 9, 100):
        _fake_ckpt(tmp_path / "run" / f"checkpoint-{step}", step, step / 10)
    ckpts = find_checkpoints([tmp_path / "run"])
    assert [c.step for c in ckpts] == [9, 10, 100]  # numeric order, not name order
    assert [c.epoch for c in ckpts] == [0.9, 1.0, 10.0]
    assert ckpts[0].metrics == {"train_loss": 1.5}


def test_a_directory_without_checkpoints_names_the_path_and_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: holds no checkpoint-\* subdirectories.*output_dir"):
        find_checkpoints([tmp_path / "empty"])
    with pytest.raises(DataError, match="no such directory"):
        find_checkpoints([tmp_path / "missing"])


def test_mixed_and_duplicate_checkpoints_are_refused(tmp_path):
    _fake_ckpt(tmp_path / "a" / "checkpoint-1", 1, 1.0)
    _fake_ckpt(tmp_path / "a" / "checkpoint-2", 2, 2.0, adapter=True)
    with pytest.raises(DataError, match="adapters and some full models"):
        find_checkpoints([tmp_path / "a"])
    _fake_ckpt(tmp_path / "b" / "checkpoint-1", 1, 1.0)
    with pytest.raises(DataError, match="two checkpoints at step 1"):
        find_checkpoints([tmp_path / "a" / "checkpoint-1", tmp_path / "b"])


def test_measure_cli_on_a_dir_without_checkpoints_exits_2_before_loading(tmp_path, capsys):
    from curator.cli.main import main

    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["measure", str(tmp_path / "out"), "--data", DATA, "--out", str(tmp_path / "l.parquet")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "out") in err
    assert not (tmp_path / "l.parquet").exists()


# -- peft adapters -------------------------------------------------------------------------------


def _adapter_run(tmp_path, examples, one_thread):
    """Two LoRA adapter checkpoints of the tiny model, and the ledger measured on the live model."""
    import torch

    from curator.dynamics.tracker import DynamicsTracker
    from curator.measure import CheckpointInfo
    from curator.models import LoraSettings, apply_lora, load_model
    from curator.sampling.hf import HFSampler

    loaded = load_model("tiny-random")
    model = apply_lora(loaded.model, LoraSettings(r=4, dropout=0.0))
    tracker = DynamicsTracker(examples, PromptFormat(), EvenLength(), k=K, params=PARAMS, p=60.0, n_checkpoints=2)
    for i in (1, 2):
        with torch.no_grad():  # stand-in for training: move the adapter weights
            g = torch.Generator().manual_seed(i)
            for _name, p in model.named_parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        path = tmp_path / "lora" / f"checkpoint-{10 * i}"
        model.save_pretrained(path)
        (path / "trainer_state.json").write_text(
            json.dumps({"global_step": 10 * i, "epoch": float(i), "log_history": []})
        )
        tracker.measure(HFSampler(model, loaded.tokenizer, batch_size=32), CheckpointInfo(i, 10 * i, float(i), {}))
    return tracker.ledger()


def test_adapter_checkpoints_measure_like_the_live_peft_model(tmp_path, examples, one_thread):
    live = _adapter_run(tmp_path, examples, one_thread)
    measured = measure_checkpoints(
        [tmp_path / "lora"],
        examples,
        measure=MeasureSettings(k=K, params=PARAMS, p=60.0),
        grader=EvenLength(),
        loader=CheckpointLoader("tiny-random"),
        progress=False,
    )
    pd.testing.assert_frame_equal(live.df, measured.df)
    assert measured.df["n_correct"].sum() > 0


def test_adapters_for_another_base_model_are_a_one_line_error(tmp_path, examples, one_thread):
    from curator.models.tiny import tiny_model, tiny_tokenizer

    _adapter_run(tmp_path, examples, one_thread)
    other = tmp_path / "other-base"
    tok = tiny_tokenizer()
    tiny_model(0, hidden=32, tokenizer=tok).save_pretrained(other)  # same architecture, other width
    tok.save_pretrained(other)
    with pytest.raises(CuratorError) as e:
        measure_checkpoints(
            [tmp_path / "lora"],
            examples,
            measure=MeasureSettings(k=K, params=PARAMS),
            loader=CheckpointLoader(str(other)),
            progress=False,
        )
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint-10" in msg and "pass --base" in msg


# -- the end-to-end agreement --------------------------------------------------------------------


def _sft_config(out, **kw):
    from trl import SFTConfig

    base = dict(
        output_dir=str(out),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="epoch",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        max_length=256,
        disable_tqdm=True,
        save_only_model=True,
    )
    base.update(kw)
    return SFTConfig(**base)


@pytest.mark.slow
def test_trl_callback_ledger_equals_curate_measure_and_curators_own_finetune(
    tmp_path, examples, one_thread, capsys, fresh_accelerate_state
):
    """TRL SFTTrainer + PreMemCallback -> ledger A; `curate measure` on the checkpoints it saved -> B;
    A == B exactly (same weights, same seeds, same batches: identical samples and log-probs).
    curator's finetune with tracking -> C, `curate measure` on finetune's saved checkpoints -> D;
    C == D exactly. So the callback measures exactly what curator's own path measures at equal weights."""
    from trl import SFTTrainer

    from curator.cli.main import main
    from curator.dynamics.ledger import read_ledger
    from curator.dynamics.metrics import dataset_premem
    from curator.engine import track_premem
    from curator.export import trl_dataset
    from curator.integrations import PreMemCallback
    from curator.models import load_model
    from curator.training import TrainSettings

    p = 50.0  # between the tiny model's perplexities after one and two epochs: both branches of lazy tracking
    grader = EvenLength()
    measure = MeasureSettings(k=K, params=PARAMS, p=p)
    # curator's own path first: a Trainer leaves accelerate's process-wide state (its bf16 mixed
    # precision) behind, which a later curator finetune in the same process would pick up
    settings = TrainSettings(
        epochs=2, learning_rate=1e-3, batch_size=4, save_checkpoints=True, output_dir=str(tmp_path / "own")
    )
    c = track_premem(
        load_model("tiny-random"),
        examples,
        fmt=PromptFormat(),
        grader=grader,
        train_settings=settings,
        measure=measure,
        progress=False,
        allow_bad_references=True,
    )
    d = measure_checkpoints([tmp_path / "own"], examples, grader=grader, measure=measure, progress=False)
    pd.testing.assert_frame_equal(c.df, d.df)
    assert {"train_loss", "dist_from_init"} <= set(c.df.columns)

    lm = load_model("tiny-random")
    trainer = SFTTrainer(
        model=lm.model,
        args=_sft_config(tmp_path / "trl"),
        train_dataset=trl_dataset(examples),
        processing_class=lm.tokenizer,
    )
    cb = PreMemCallback(examples, grader=grader, measure=measure, progress=False).attach(trainer)
    trainer.train()
    # TRL trains in bf16 autocast here; the callback measured the weights themselves (without_autocast)
    assert trainer.accelerator.mixed_precision == "bf16"
    a = read_ledger(tmp_path / "trl" / "ledger.parquet")
    pd.testing.assert_frame_equal(a.df, cb.ledger.df)
    assert a.checkpoints == [1, 2] and a.df["step"].unique().tolist() == [2, 4]
    # lazy tracking did skip something, and the planted grader counted some samples correct
    assert a.df["skip_reason"].notna().any() and a.df["n_correct"].sum() > 0
    # reported through the trainer's own log (what report_to backends receive)
    logged = [h for h in trainer.state.log_history if "fraction_memorized" in h]
    assert [h["step"] for h in logged] == [2, 4]
    final = a.df[a.df.checkpoint == 2]
    assert logged[-1]["fraction_memorized"] == final["memorized"].mean()
    assert logged[-1]["premem_acc"] == pytest.approx(dataset_premem(a).iloc[-1])
    # lazy tracking cut memorized examples short at the final checkpoint: train accuracy is only bounded
    assert ("train_accuracy" in logged[-1]) == (final["n_samples"] == K).all()

    b = measure_checkpoints([tmp_path / "trl"], examples, grader=grader, measure=measure, progress=False)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert {"train_loss", "grad_norm", "learning_rate"} <= set(a.df.columns)

    # the CLI gives the same ledger (default grader here: a real one, so compare the log-probs)
    main(
        [
            "measure",
            str(tmp_path / "trl"),
            "--data",
            DATA,
            "--samples",
            str(K),
            "--p",
            str(p),
            "--max-new-tokens",
            "12",
            "--seed",
            "5",
            "--quiet",
            "--out",
            str(tmp_path / "cli.parquet"),
        ]
    )
    cli = read_ledger(tmp_path / "cli.parquet")
    pd.testing.assert_series_equal(cli.df["target_nll"], a.df["target_nll"])
    assert "ledger:" in capsys.readouterr().out


@pytest.mark.slow
def test_unattached_callback_still_records_and_a_resumed_run_is_not_measured(
    tmp_path, examples, one_thread, caplog, fresh_accelerate_state
):
    from trl import SFTTrainer

    from curator.export import trl_dataset
    from curator.integrations import PreMemCallback
    from curator.models import load_model

    lm = load_model("tiny-random")
    cb = PreMemCallback(
        examples[:4],
        measure=MeasureSettings(k=1, params=PARAMS),
        on="epoch",
        out=tmp_path / "l.parquet",
        progress=False,
    )
    trainer = SFTTrainer(
        model=lm.model,
        args=_sft_config(tmp_path / "o", num_train_epochs=1, save_strategy="no"),
        train_dataset=trl_dataset(examples[:4]),
        processing_class=lm.tokenizer,
        callbacks=[cb],
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert "attach(trainer)" in caplog.text
    assert [h["step"] for h in trainer.state.log_history if "premem_acc" in h] == [1]
    assert (tmp_path / "l.parquet").exists()

    never_saves = PreMemCallback(examples[:4], measure=MeasureSettings(k=1, params=PARAMS), progress=False)
    with pytest.raises(ConfigError, match="never saves.*save_strategy='epoch'"):
        never_saves.on_train_begin(trainer.args, SimpleNamespace(global_step=0), None)

    resumed = PreMemCallback(examples[:4], measure=MeasureSettings(k=1, params=PARAMS), progress=False)
    state = SimpleNamespace(global_step=7)
    resumed.on_train_begin(SimpleNamespace(output_dir="o"), state, None)
    assert resumed.tracker is None and "curate measure o" in resumed._disabled


@pytest.mark.slow
def test_checkpoint_source_measures_the_saved_directory_like_the_live_model(
    tmp_path, examples, one_thread, fresh_accelerate_state
):
    """source="checkpoint" (what FSDP / ZeRO-3 runs use) loads each directory the trainer just saved;
    in the same run a live-model callback sees the same weights, so the two ledgers are equal."""
    from trl import SFTTrainer

    from curator.export import trl_dataset
    from curator.integrations import PreMemCallback
    from curator.models import load_model

    lm = load_model("tiny-random")
    trainer = SFTTrainer(
        model=lm.model,
        args=_sft_config(tmp_path / "o"),
        train_dataset=trl_dataset(examples[:4]),
        processing_class=lm.tokenizer,
    )
    kw = dict(grader=EvenLength(), measure=MeasureSettings(k=2, params=PARAMS, p=50.0), progress=False)
    live = PreMemCallback(examples[:4], out=tmp_path / "live.parquet", source="live", **kw).attach(trainer)
    saved = PreMemCallback(examples[:4], out=tmp_path / "saved.parquet", source="checkpoint", **kw).attach(trainer)
    trainer.train()
    assert saved.source == "checkpoint" and len(saved.ledger.checkpoints) == 2
    pd.testing.assert_frame_equal(live.ledger.df, saved.ledger.df)


def test_a_full_checkpoint_without_tokenizer_needs_base(tmp_path, examples):
    _fake_ckpt(tmp_path / "run" / "checkpoint-3", 3, 1.0)
    with pytest.raises(ConfigError, match=r"checkpoint-3: the checkpoint holds no tokenizer.*pass --base"):
        measure_checkpoints([tmp_path / "run"], examples, progress=False)
    with pytest.raises(ConfigError, match="samples per example"):
        measure_checkpoints([tmp_path / "run"], examples, measure=MeasureSettings(k=0), progress=False)


def test_importing_the_integrations_package_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, curator.integrations, curator.measure, curator.export, curator.cli.measure, "
        "curator.cli.export; print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets', 'peft') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


DDP_SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from trl import SFTConfig, SFTTrainer
from curator.data.loaders import load_examples
from curator.dynamics.settings import MeasureSettings
from curator.export import trl_dataset
from curator.integrations import PreMemCallback
from curator.models import load_model
from curator.sampling.base import SamplingParams

out, rank = sys.argv[1], int(os.environ["RANK"])
examples = load_examples("synthetic:easy?n=8&seed=0")
lm = load_model("tiny-random")
args = SFTConfig(output_dir=out, num_train_epochs=2, per_device_train_batch_size=2, learning_rate=1e-3,
                 save_strategy="epoch", save_only_model=True, logging_steps=1, report_to=[], use_cpu=True,
                 seed=0, max_length=256, disable_tqdm=True, bf16=False)
trainer = SFTTrainer(model=lm.model, args=args, train_dataset=trl_dataset(examples), processing_class=lm.tokenizer)
measure = MeasureSettings(k=2, params=SamplingParams(max_new_tokens=8, seed=5), p=50.0)
cb = PreMemCallback(examples, measure=measure, progress=False,
                    out=os.path.join(out, f"ledger-rank{rank}.parquet")).attach(trainer)
trainer.train()
logged = [h for h in trainer.state.log_history if "fraction_memorized" in h]
json.dump({"world": trainer.args.world_size, "ledger": cb.ledger.df.to_json(), "logged": logged},
          open(os.path.join(out, f"report-{rank}.json"), "w"))
del trainer, cb, lm
from curator.distributed import shutdown
shutdown()  # end the process group before interpreter exit (the gloo abort at exit under load)
"""


@pytest.mark.slow
def test_two_process_ddp_run_measures_on_every_rank_and_only_the_main_one_writes(tmp_path):
    import os
    import subprocess

    script = tmp_path / "ddp_callback.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = launch_cmd(
        2,
        [
            str(script),
            str(tmp_path / "out"),
        ],
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / "out" / f"report-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    # both ranks measured the same ledger and reported the same metrics; only rank 0 wrote
    assert reports[0]["ledger"] == reports[1]["ledger"] and reports[0]["logged"] == reports[1]["logged"]
    assert (tmp_path / "out" / "ledger-rank0.parquet").exists()
    assert not (tmp_path / "out" / "ledger-rank1.parquet").exists()
    # 8 examples / (2 ranks x 2) -> 2 steps per epoch; one measurement per saved epoch
    assert [h["step"] for h in reports[0]["logged"]] == [2, 4]
