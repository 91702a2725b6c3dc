"""Measuring a checkpoint under ``accelerate launch --num_processes 2`` (CPU, gloo).

`PreMemCallback` inside a DDP Trainer run and `curate measure` over its checkpoints each must
sample and score every example exactly once in total across the ranks (each rank its share, the
two shares disjoint), write the ledger once (the main process), and give exactly the ledger one
process measures from the same weights. A script run under the launcher records, per rank, every
prompt the hf sampler was handed and every ledger write; the test counts them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from launching import launch_cmd

N_EXAMPLES = 8
K = 2

# patched in every process before anything runs: HFSampler calls and ledger writes are recorded
# per rank (class attributes, so whatever builds the sampler is counted)
SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from curator.dynamics.ledger import Ledger
from curator.sampling.hf import HFSampler

rank = int(os.environ.get("RANK", "0"))
log_dir, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
seen = {"generate": [], "score": [], "writes": []}

def save():
    with open(os.path.join(log_dir, f"calls-{mode}-rank{rank}.json"), "w") as f:
        json.dump(seen, f)

real_generate, real_score, real_write = HFSampler.generate, HFSampler.target_logprobs, Ledger.to_parquet

def generate(self, prompts, n, params):
    seen["generate"].extend(list(prompts))
    return real_generate(self, prompts, n, params)

def target_logprobs(self, prompts, targets):
    seen["score"].extend(list(prompts))
    return real_score(self, prompts, targets)

def to_parquet(self, path):
    seen["writes"].append(str(path))
    save()
    return real_write(self, path)

HFSampler.generate, HFSampler.target_logprobs, Ledger.to_parquet = generate, target_logprobs, to_parquet

if mode == "callback":
    from trl import SFTConfig, SFTTrainer
    from curator.data.loaders import load_examples
    from curator.dynamics.settings import MeasureSettings
    from curator.export import trl_dataset
    from curator.integrations import PreMemCallback
    from curator.models import load_model
    from curator.sampling.base import SamplingParams
    from evenlen import EvenLength

    out = args[0]
    examples = load_examples("synthetic:easy?n=@N@&seed=0")
    lm = load_model("tiny-random")
    cfg = SFTConfig(output_dir=out, num_train_epochs=2, per_device_train_batch_size=2, learning_rate=1e-3,
                    save_strategy="epoch", save_only_model=True, logging_steps=1, report_to=[], use_cpu=True,
                    seed=0, max_length=256, disable_tqdm=True, bf16=False)
    trainer = SFTTrainer(model=lm.model, args=cfg, train_dataset=trl_dataset(examples), processing_class=lm.tokenizer)
    measure = MeasureSettings(k=@K@, params=SamplingParams(max_new_tokens=8, seed=5), p=50.0, lazy=False)
    PreMemCallback(examples, grader=EvenLength(), measure=measure, progress=False).attach(trainer)
    trainer.train()
    del trainer, lm
    from curator.distributed import shutdown
    shutdown()  # end the process group before interpreter exit (the gloo abort at exit under load)
else:
    from curator.cli.main import main
    try:
        main(args)
    except SystemExit as e:
        if e.code:
            raise
save()
""".replace("@N@", str(N_EXAMPLES)).replace("@K@", str(K))


def _launch(n: int, tmp: Path, mode: str, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp / "measure_ranks.py"
    if not script.exists():
        script.write_text(SCRIPT)
        shutil.copy(Path(__file__).with_name("evenlen.py"), tmp)
    cmd = launch_cmd(n, [str(script)])
    path = os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CURATOR_QUIET="1", PYTHONPATH=path)
    proc = subprocess.run(
        [*cmd, str(tmp / "logs"), mode, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _calls(tmp: Path, mode: str, rank: int) -> dict:
    return json.loads((tmp / "logs" / f"calls-{mode}-rank{rank}.json").read_text())


def _measure_args(tmp: Path, out: str) -> list[str]:
    return [
        "measure",
        str(tmp / "run"),
        "--data",
        f"synthetic:easy?n={N_EXAMPLES}&seed=0",
        "--grader",
        "evenlen:EvenLength",
        "--samples",
        str(K),
        "--max-new-tokens",
        "8",
        "--seed",
        "5",
        "--p",
        "50",
        "--full",
        "--out",
        str(tmp / out),
        "--quiet",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process DDP Trainer run with the callback, then `curate measure` over its checkpoints
    in 2 processes and in 1."""
    tmp = tmp_path_factory.mktemp("ranks")
    (tmp / "logs").mkdir()
    _launch(2, tmp, "callback", [str(tmp / "run")])
    two = _launch(2, tmp, "measure2", _measure_args(tmp, "measured-2.parquet"))
    _launch(1, tmp, "measure1", _measure_args(tmp, "measured-1.parquet"))
    return tmp, two


def _prompts(examples_n: int) -> list[str]:
    from curator.data.format import PromptFormat
    from curator.data.loaders import load_examples

    return PromptFormat().pairs(load_examples(f"synthetic:easy?n={examples_n}&seed=0"))[0]


def _each_once_per_checkpoint(calls: list[dict], key: str, n_checkpoints: int) -> None:
    """Over the ranks, every example's prompt was handed to the sampler once per checkpoint, and
    the ranks' shares are disjoint and both non-empty."""
    prompts = _prompts(N_EXAMPLES)
    per_rank = [Counter(c[key]) for c in calls]
    total = sum(per_rank, Counter())
    assert total == Counter({q: n_checkpoints for q in prompts})
    assert not set(per_rank[0]) & set(per_rank[1])
    assert all(per_rank), "each rank samples a share"


@pytest.mark.slow
def test_callback_under_two_processes_samples_each_example_once_and_writes_once(runs):
    tmp, _ = runs
    calls = [_calls(tmp, "callback", r) for r in (0, 1)]
    for key in ("score", "generate"):  # full tracking: one generate call per checkpoint
        _each_once_per_checkpoint(calls, key, n_checkpoints=2)
    # the main process wrote the ledger after each of the 2 checkpoints; rank 1 never wrote
    assert calls[0]["writes"] == [str(tmp / "run" / "ledger.parquet")] * 2 and calls[1]["writes"] == []
    # the one-process measurement of the very weights the run saved gives the same ledger
    a = pd.read_parquet(tmp / "run" / "ledger.parquet")
    b = pd.read_parquet(tmp / "measured-1.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert a["n_correct"].sum() > 0 and a["checkpoint"].tolist() == [1] * N_EXAMPLES + [2] * N_EXAMPLES


@pytest.mark.slow
def test_curate_measure_under_two_processes_samples_each_example_once_and_writes_once(runs):
    tmp, two = runs
    calls = [_calls(tmp, "measure2", r) for r in (0, 1)]
    one = _calls(tmp, "measure1", 0)
    for key in ("score", "generate"):
        _each_once_per_checkpoint(calls, key, n_checkpoints=2)
        assert Counter(one[key]) == sum((Counter(c[key]) for c in calls), Counter())
    assert calls[0]["writes"] == [str(tmp / "measured-2.parquet")] and calls[1]["writes"] == []
    assert two.stdout.count("examples from") == 1  # one rank speaks
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp / "measured-2.parquet"), pd.read_parquet(tmp / "measured-1.parquet")
    )


def test_gather_rows_splits_rows_over_ranks_and_puts_them_back_in_order(monkeypatch):
    """The routing monitor's split (`gather_rows`): row i on rank i % world, each computed once,
    every rank gets the one-process array; with sharded parameters (FSDP) each rank does all."""
    import numpy as np

    from curator import distributed
    from curator.sampling.sharded import gather_rows

    def rows(idx):
        return np.array([[i, 10 * i] for i in idx], dtype=np.float32)

    want = rows(range(5))
    computed: list[list[int]] = []

    def compute(idx):
        computed.append(list(idx))
        return rows(idx)

    shares = {}
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for r in (0, 1):  # each rank's own share first, as the all-gather would collect them
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "gather_objects", lambda obj, what="", r=r: [obj] * 2)
        gather_rows(5, lambda idx, r=r: shares.setdefault(r, list(idx)) and rows(idx))
    assert shares == {0: [0, 2, 4], 1: [1, 3]}
    monkeypatch.setattr(distributed, "gather_objects", lambda obj, what="": [(shares[0], rows(shares[0])), obj])
    got = gather_rows(5, compute)  # rank 1 (the last one set): computes only its share
    assert computed == [[1, 3]]
    np.testing.assert_array_equal(got, want)

    class Fsdp:
        params_sharded = True

    computed.clear()
    np.testing.assert_array_equal(gather_rows(5, compute, Fsdp()), want)
    assert computed == [[0, 1, 2, 3, 4]]
