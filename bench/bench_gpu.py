"""GPU check, under 10 minutes on one GPU (no vLLM needed): prints figures; nothing in CI depends on it.

1. `hf` sampler throughput on SmolLM2-135M (bf16) against the memory-bandwidth bound of a decode
   step (every weight read once, plus each row's KV cache) — bench/bench_sampler.py's model.
2. A 2-round active loop (`run_recipe`) on SmolLM2 with synthetic data: seconds per round, and
   the round's metrics.
3. When there is more than one GPU: the same loop under `accelerate launch --num_processes 2`,
   compared with the one-process run (the ledgers' sampled counts and the metrics should agree;
   training differs only by float rounding of the gradient all-reduce).

    python bench/bench_gpu.py               # on a GPU machine
    python bench/bench_gpu.py --cpu-smoke   # tiny-random model on CPU, seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curator.distributed import launch_cmd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def loop_recipe(out: Path, smoke: bool) -> dict:
    model = "tiny-random" if smoke else "smollm2-135m-instruct"
    return {
        "name": "bench-gpu",
        "seed": 0,
        "output_dir": str(out),
        "model": {
            "name": model,
            "lora": None,
            "device": "cpu" if smoke else None,
            "dtype": "float32" if smoke else "bfloat16",
        },
        "data": {
            "pool": f"synthetic:easy?n={200 if smoke else 2000}&seed=1",
            "test": f"synthetic:easy?n={8 if smoke else 200}&seed=2",
            "seed_size": 8 if smoke else 128,
            "grader": "gsm8k",
        },
        "training": {
            "epochs": 2,
            "learning_rate": 3e-3 if smoke else 5e-5,
            "batch_size": 4 if smoke else 32,
            "max_length": 384,
        },
        "dynamics": {
            "samples": 2 if smoke else 4,
            "max_new_tokens": 12 if smoke else 96,
            "batch_size": 16 if smoke else 256,
        },
        "evaluation": {"max_new_tokens": 12 if smoke else 96},
        "loop": {"rounds": 2, "budget": 8 if smoke else 128},
        "strategies": [{"name": "loss"}],
    }


def sampler_section(smoke: bool) -> None:
    import torch
    from bench_sampler import build_prompts, decode_bytes, describe_device

    from curator.models import load_model
    from curator.sampling import HFSampler, SamplingParams

    print("== 1. hf sampler throughput")
    if smoke:
        lm = load_model("tiny-random", device="cpu")
        bw = nominal = None
        name = "cpu"
    else:
        lm = load_model("smollm2-135m-instruct", device="cuda", dtype="bfloat16")
        name, nominal, bw = describe_device()
    prompts = build_prompts(16 if smoke else 256)
    n, max_new, batch = (2, 16, 32) if smoke else (4, 128, 512)
    # no stop string: every row decodes max_new tokens, so the row count (and the bound) is exact
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=max_new, stop=(), seed=0)
    s = HFSampler(lm.model, lm.tokenizer, batch_size=batch)
    s.generate(prompts[:2], 2, params)  # warm-up
    s.tokens_generated = 0
    sync = torch.cuda.synchronize if not smoke else (lambda: None)
    sync()
    t0 = time.perf_counter()
    s.generate(prompts, n, params)
    sync()
    sec = time.perf_counter() - t0
    rate = s.tokens_generated / sec
    line = f"{name}: {s.tokens_generated} tokens in {sec:.1f}s = {rate:.0f} tokens/s"
    if bw is not None:
        rows = min(batch, len(prompts) * n)
        mean_prompt = sum(len(lm.tokenizer(p)["input_ids"]) for p in prompts) / len(prompts)
        w, kv = decode_bytes(lm.model, rows, mean_prompt + max_new / 2)
        bound = rows * (nominal or bw) / (w + kv)
        line += (
            f"; bandwidth bound {bound:.0f} tokens/s (batch {rows} rows, weights {w / 1e9:.2f} GB + "
            f"KV {kv / 1e9:.2f} GB per step) -> {100 * rate / bound:.0f}% of bound"
        )
    print(line)


def run_loop(recipe: dict, processes: int, devices: int) -> tuple[float, list[dict], Path]:
    """Run `curate run` on ``recipe`` in ``processes`` processes; returns seconds, per-round metrics."""
    import yaml

    out = Path(recipe["output_dir"])
    shutil.rmtree(out, ignore_errors=True)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    env = dict(os.environ, CURATOR_QUIET="1", TOKENIZERS_PARALLELISM="false")
    args = ["-m", "curator.cli.main", "run", str(path), "--quiet"]
    cmd = launch_cmd(processes, args)
    if processes > 1 and devices == 0:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    sec = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    rounds = [json.loads((d / "metrics.json").read_text()) for d in sorted((out / "loss").glob("round-*"))]
    return sec, rounds, out / "loss"


def loop_section(smoke: bool, work: Path) -> Path:
    print("== 2. 2-round loop (" + ("tiny-random, CPU" if smoke else "SmolLM2-135M") + ")")
    sec, rounds, run = run_loop(loop_recipe(work / "one", smoke), 1, 0 if smoke else 1)
    for m in rounds:
        print(
            f"round {m['round']}: n={m['n_train']} test_acc={m['test_accuracy']:.3f} premem={m['premem_acc']:.3f} "
            f"train {m['train_seconds']:.1f}s, round {m['round_seconds']:.1f}s"
        )
    print(f"total wall time (including model load and MLflow): {sec:.1f}s")
    return run


def multiprocess_section(smoke: bool, work: Path, one: Path) -> None:
    import pandas as pd
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not smoke and n_gpu < 2:
        print(f"== 3. multi-process: skipped ({n_gpu} GPU; needs 2)")
        return
    print("== 3. multi-process: 2 processes vs 1 (" + ("CPU, gloo" if smoke else f"{n_gpu} GPUs") + ")")
    recipe = loop_recipe(work / "two", smoke)
    recipe["training"]["batch_size"] //= 2  # same global batch as the one-process run
    sec, _, two = run_loop(recipe, 2, 0 if smoke else n_gpu)
    for r in sorted(p.name for p in one.glob("round-*")):
        a, b = pd.read_parquet(one / r / "ledger.parquet"), pd.read_parquet(two / r / "ledger.parquet")
        same = (a["n_correct"].to_numpy() == b["n_correct"].to_numpy()).mean()
        dnll = (a["target_nll"] - b["target_nll"]).abs().max()
        ma, mb = (json.loads((d / r / "metrics.json").read_text()) for d in (one, two))
        print(
            f"{r}: ledger cells with equal n_correct {100 * same:.1f}%, max |target_nll diff| {dnll:.2e}; "
            f"test_acc {ma['test_accuracy']:.3f} vs {mb['test_accuracy']:.3f}; "
            f"premem {ma['premem_acc']:.3f} vs {mb['premem_acc']:.3f}"
        )
    print(f"2-process wall time: {sec:.1f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU: checks the script runs")
    ap.add_argument("--keep", default=None, help="keep run directories here (default: a temp dir)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1 if args.cpu_smoke else torch.get_num_threads())
    if not args.cpu_smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --cpu-smoke to check the script on CPU")
    work = Path(args.keep or tempfile.mkdtemp(prefix="curator-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sampler_section(args.cpu_smoke)
    one = loop_section(args.cpu_smoke, work)
    multiprocess_section(args.cpu_smoke, work, one)
    print(f"bench_gpu done in {time.perf_counter() - t0:.0f}s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
