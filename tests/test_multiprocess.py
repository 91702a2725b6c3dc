"""`curate run` under `accelerate launch --num_processes 2` (CPU, gloo) gives the one-process run.

Two processes with micro-batch b train exactly what one process with micro-batch 2b trains (the
data plan cuts global micro-batches; the loss is the exact mean over the step's target tokens),
up to float rounding of the gradient all-reduce. Measurement is sharded across the ranks and
gathered, with per-sample random streams, so selections, ledgers and metrics must agree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from launching import launch_cmd, tiny_recipe

RECIPE = tiny_recipe(
    name="mp",
    seed=3,
    data={"seed_size": 6},
    training={"epochs": 2, "batch_size": 2},
    dynamics={"max_new_tokens": 10},
    evaluation={"max_new_tokens": 10},
    strategies=[{"name": "loss"}],
)


def _env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        CURATOR_QUIET="1",
        CURATOR_COLLECTIVE_TIMEOUT="120",
    )


def _launch(n: int, args: list[str]) -> list[str]:
    return launch_cmd(n, ["-m", "curator.cli.main", *args])


def _run(tmp_path: Path, n: int, batch_size: int) -> Path:
    d = json.loads(json.dumps(RECIPE))
    d["output_dir"] = str(tmp_path / f"n{n}")
    d["training"]["batch_size"] = batch_size
    path = tmp_path / f"n{n}.yaml"
    path.write_text(yaml.safe_dump(d))
    proc = subprocess.run(
        _launch(n, ["run", str(path), "--quiet"]), env=_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if n > 1:
        assert proc.stdout.count("recipe 'mp'") == 1  # one rank speaks
    return Path(d["output_dir"]) / "loss"


@pytest.mark.slow
def test_run_under_two_processes_equals_one(tmp_path):
    one = _run(tmp_path, 1, batch_size=4)
    two = _run(tmp_path, 2, batch_size=2)
    for r in ("round-00", "round-01"):
        a, b = pd.read_parquet(one / r / "ledger.parquet"), pd.read_parquet(two / r / "ledger.parquet")
        assert a["example_id"].tolist() == b["example_id"].tolist()
        assert a["n_correct"].tolist() == b["n_correct"].tolist()
        assert a["n_samples"].tolist() == b["n_samples"].tolist()
        np.testing.assert_allclose(a["target_nll"], b["target_nll"], rtol=0, atol=1e-4)
        ma, mb = json.loads((one / r / "metrics.json").read_text()), json.loads((two / r / "metrics.json").read_text())
        for key in ("n_train", "test_accuracy", "premem_acc", "train_accuracy", "fraction_memorized"):
            assert ma[key] == mb[key], key
    sa = pd.read_parquet(one / "round-00" / "selection.parquet")
    sb = pd.read_parquet(two / "round-00" / "selection.parquet")
    assert sa[sa.selected]["example_id"].tolist() == sb[sb.selected]["example_id"].tolist()
    assert json.loads((one / "round-00" / "next_train_ids.json").read_text()) == json.loads(
        (two / "round-00" / "next_train_ids.json").read_text()
    )
    # only the main process wrote: no stray temporary files
    assert not list(two.parent.rglob("*.tmp*"))


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_others(tmp_path):
    d = json.loads(json.dumps(RECIPE))
    d["output_dir"] = str(tmp_path / "dies")
    path = tmp_path / "dies.yaml"
    path.write_text(yaml.safe_dump(d))
    # rank 1 is killed right after training round 0. torchrun's agent (under accelerate launch)
    # then stops rank 0 at once (SIGTERM); where no agent does (a rank on another node), rank 0's
    # next collective fails with one RankFailure line (test_a_failed_collective_is_one_line).
    # Either way: no hang, and the round stays undone
    env = dict(_env(), CURATOR_FAULT="round0:trained", CURATOR_FAULT_RANK="1")
    proc = subprocess.run(
        _launch(2, ["run", str(path), "--quiet"]), env=env, capture_output=True, text=True, timeout=400, check=False
    )
    assert proc.returncode != 0
    assert not (tmp_path / "dies" / "loss" / "round-00" / "DONE").exists()  # a rerun redoes round 0


def test_a_failed_collective_is_one_line(monkeypatch):
    from curator import distributed

    class FakeDist:
        @staticmethod
        def get_rank():
            return 0

        @staticmethod
        def get_world_size():
            return 2

        @staticmethod
        def all_gather_object(out, obj):
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")

    monkeypatch.setattr(distributed, "_dist", lambda: FakeDist)
    monkeypatch.setenv("CURATOR_COLLECTIVE_TIMEOUT", "60")
    with pytest.raises(distributed.RankFailure) as e:
        distributed.gather_objects(1, "gathering sampled results")
    msg = str(e.value)
    assert msg.startswith(
        "rank 0 of 2: gathering sampled results failed because another process of this launch "
        "stopped or did not answer within 60s ([../gloo/transport/tcp/pair.cc:534] Connection closed"
    )
    assert "\n" not in msg and "rerun the same command to resume" in msg
    # a bug that is not a communication failure keeps its traceback
    FakeDist.all_gather_object = staticmethod(lambda out, obj: (_ for _ in ()).throw(ValueError("bad obj")))
    with pytest.raises(ValueError):
        distributed.gather_objects(1)


FSDP_WORKER = """
import copy, gc, json, sys
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from curator.training.stats import DistanceFromInit, GradStats

torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
full = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
sharded = copy.deepcopy(full)
for layer in sharded:
    fully_shard(layer)
fully_shard(sharded)

def reduce(t):
    dist.all_reduce(t)  # sum over processes
    return t

stats = {"full": (GradStats(list(full.parameters())), DistanceFromInit(list(full.parameters()))),
         "sharded": (GradStats(list(sharded.parameters()), reduce=reduce),
                     DistanceFromInit(list(sharded.parameters()), reduce=reduce))}
models = {"full": full, "sharded": sharded}
opts = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in models.items()}
for step in range(3):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step))  # the same batch on every rank
    for k, m in models.items():
        opts[k].zero_grad()
        m(x).pow(2).sum().backward()  # FSDP averages identical gradients: the full gradient
        stats[k][0].update()
        opts[k].step()
out = {k: {**s.window(), "dist_from_init": d.distance()} for k, (s, d) in stats.items()}
w = next(sharded.parameters())
out["local_numel"], out["full_numel"] = w.to_local().numel(), w.numel()
if dist.get_rank() == 0:
    json.dump(out, open(sys.argv[1], "w"))
# teardown in a fixed order while the interpreter is whole: first every object that holds the
# process group or gloo work on it (the FSDP modules and their parameters, the optimizers, the
# statistics' reduce hooks), then the group, after a last barrier so neither rank has a
# collective in flight. Left to interpreter finalization, gloo's C++ state can be destroyed after
# Python's own (a SIGABRT, "terminate called without an active exception", exit -6: the failure
# this test had on loaded machines; pytorch/pytorch#179291 describes the mechanism)
del stats, models, opts, sharded, full, w, reduce
gc.collect()
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_statistics_over_fsdp_sharded_parameters(tmp_path):
    """accelerate maps an FSDP launch without GPUs to plain CPU processes, so finetune's FSDP path
    cannot run here; torch's FSDP2 itself runs on 2 CPU processes (gloo): the gradient variance,
    gradient norm and distance from init computed over its shards and summed across processes
    equal the unsharded model's."""
    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        str(out),
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["local_numel"] < res["full_numel"]  # really sharded
    for key in ("grad_variance", "grad_norm", "dist_from_init"):
        assert res["sharded"][key] == pytest.approx(res["full"][key], rel=1e-5), key
    assert res["full"]["grad_variance"] > 0 and res["full"]["dist_from_init"] > 0


SWEEP_SCRIPT = """
import sys
from curator.analysis.sweep import sweep_from_recipe
from curator.recipes import load_recipe
from curator.errors import CuratorError
try:
    sweep_from_recipe(load_recipe(sys.argv[1]), progress=False, echo=lambda *a, **k: None)
except CuratorError as e:
    # the random tiny model's PreMemAcc is 0 everywhere, so the closing fit has nothing to fit;
    # every configuration's files are written before it, and those are what is compared
    if "nothing to fit" not in str(e):
        raise
from curator.distributed import shutdown
shutdown()  # end the process group before interpreter exit (the gloo abort at exit under load)
"""


@pytest.mark.slow
def test_sweep_under_two_processes_equals_one(tmp_path):
    """`curate sweep`'s engine (sweep_from_recipe) under 2 ranks writes what 1 process writes."""
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    dirs = {}
    for n, bs in ((1, 4), (2, 2)):
        d = {k: v for k, v in json.loads(json.dumps(RECIPE)).items() if k not in ("loop", "strategies")}
        d["output_dir"] = str(tmp_path / f"sweep{n}")
        d["data"] = {**d["data"], "pool_size": 8}
        d["training"]["batch_size"] = bs
        d["dynamics"]["lazy"] = False
        d["sweep"] = {"learning_rates": [0.003], "epochs": [1, 2]}
        path = tmp_path / f"sweep{n}.yaml"
        path.write_text(yaml.safe_dump(d))
        cmd = [sys.executable, str(script), str(path)] if n == 1 else _launch(2, ["x"])[:-3] + [str(script), str(path)]
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        dirs[n] = Path(d["output_dir"])
    runs = sorted(p.name for p in dirs[1].iterdir() if p.is_dir())
    assert runs == ["lr0.003-ep1", "lr0.003-ep2"]
    assert sorted(p.name for p in dirs[2].iterdir() if p.is_dir()) == runs
    for run in runs:
        a = pd.read_parquet(dirs[1] / run / "ledger.parquet")
        b = pd.read_parquet(dirs[2] / run / "ledger.parquet")
        assert a["example_id"].tolist() == b["example_id"].tolist()
        assert a["n_correct"].tolist() == b["n_correct"].tolist()
        np.testing.assert_allclose(a["target_nll"], b["target_nll"], rtol=0, atol=1e-4)
        ta, tb = pd.read_csv(dirs[1] / run / "checkpoints.csv"), pd.read_csv(dirs[2] / run / "checkpoints.csv")
        assert ta["test_accuracy"].tolist() == tb["test_accuracy"].tolist()
        np.testing.assert_allclose(ta["train_loss"], tb["train_loss"], rtol=0, atol=1e-4)


def test_the_cli_ends_a_process_group_its_command_started(tmp_path):
    """After a command returns, `curate` ends the launch's process group itself (curator's
    `distributed.shutdown`), so no gloo state is left to interpreter finalization."""
    script = tmp_path / "ends.py"
    script.write_text(
        "import torch.distributed as dist\n"
        "from curator.cli.main import main\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "try:\n"
        "    main(['data', 'preview', 'synthetic:easy?n=1&seed=0'])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "print('initialized after:', dist.is_initialized())\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("initialized after: False")
