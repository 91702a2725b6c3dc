"""The RL selection seam's cost per training step (issue 21's targets: <= 1% of a GRPO step on the
organism, <= 10 ms per step for a 100k-prompt pool).

    nice -n 5 python bench/bench_rl_seam.py                      # both figures
    python bench/bench_rl_seam.py --runs bench/results/rl/runs.jsonl   # the ratio measured inside
                                                                  # the RL benchmark's own runs

Per step the seam does one ``observe`` (k prompts x G rewards) and one ``select(k)``. Part 1
times that on a synthetic pool (no model: the rewards come from fixed per-prompt solve rates) for
each strategy, median over steps after the pool has been partly observed. Part 2 times GRPO steps
of TRL's GRPOTrainer on the organism (8 prompts x 4 completions, as in bench/rl_benchmark.py) and
the seam's share of them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from curator.integrations.rl import RolloutCurator, rollout_pool

STRATEGIES = {
    "iid": {},
    "pass-rate-band": {"lo": 0.25, "hi": 0.75},
    "drop-solved-failed": {},
    "learnability": {},
    "uncertainty": {},
}


def seam_ms(pool_size: int, k: int, group: int, strategy: str, steps: int = 40, warm: int = 20) -> float:
    """Median ms of observe + select per step, after ``warm`` steps of history."""
    pool = rollout_pool([f"q{i}" for i in range(pool_size)], answers=["1"] * pool_size)
    c = RolloutCurator(pool, strategy, STRATEGIES[strategy], seed=0)
    rate = np.random.default_rng(0).random(pool_size)
    times = []
    ids = c.select(k)
    for step in range(warm + steps):
        pos = c._positions(ids)
        rewards = (np.random.default_rng([step]).random((k, group)) < rate[pos, None]).astype(float).reshape(-1)
        t = time.perf_counter()
        c.observe(np.repeat(ids, group).tolist(), rewards, step=step)
        ids = c.select(k)
        if step >= warm:
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def grpo_ratio(steps: int = 8) -> tuple[float, float]:
    """(seconds per GRPO step on the organism, seam seconds per step) from a short real run."""
    import tempfile

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from curator.data.loaders import load_examples
    from curator.integrations.grpo import GRPOCuration, grader_reward
    from curator.models import load_model

    lm = load_model("organism")
    tok = lm.tokenizer
    lm.model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("\nDone")]
    pool = load_examples("synthetic:easy?n=128&seed=101&min_steps=1&max_steps=2&max_operand=10")
    ds = Dataset.from_list([{"prompt": f"{e.question}\nAnswer:", "answer": e.answer, "id": e.id} for e in pool])
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="curator-seam-"),
        per_device_train_batch_size=32,
        num_generations=4,
        max_completion_length=72,
        max_steps=steps,
        report_to="none",
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    reward = grader_reward("gsm8k", stop=["\nDone"])
    t = GRPOTrainer(lm.model, reward_funcs=[reward], args=cfg, train_dataset=ds, processing_class=tok)
    cur = GRPOCuration("learnability").attach(t)
    spent = [0.0]
    for meth in ("observe", "select"):
        f = getattr(cur.curator, meth)

        def timed(*a, _f=f, **kw):
            s = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - s

        setattr(cur.curator, meth, timed)
    s = time.perf_counter()
    t.train()
    return (time.perf_counter() - s) / steps, spent[0] / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", help="runs.jsonl of bench/rl_benchmark.py: take the ratio from its runs")
    p.add_argument("--skip-grpo", action="store_true", help="only the 100k-pool timings")
    a = p.parse_args()
    print("seam cost per step (observe + select), median ms")
    print("| pool | k prompts x G | " + " | ".join(STRATEGIES) + " |")
    print("| --- | --- |" + " --- |" * len(STRATEGIES))
    for pool_size, k, g in ((2_000, 8, 4), (100_000, 8, 4), (100_000, 512, 8)):
        ms = [seam_ms(pool_size, k, g, s) for s in STRATEGIES]
        print(f"| {pool_size:,} | {k} x {g} | " + " | ".join(f"{m:.2f}" for m in ms) + " |")
    if a.runs:
        rows = [json.loads(x) for x in Path(a.runs).read_text().splitlines() if x.strip()]
        seam, wall = sum(r["seam_s"] for r in rows), sum(r["wall_s"] for r in rows)
        steps = sum(r["key"][3] for r in rows)
        print(
            f"\nRL benchmark runs ({len(rows)}, {steps} GRPO steps incl. evaluation callbacks): "
            f"{wall / steps:.2f} s per step, seam {1000 * seam / steps:.2f} ms per step = {100 * seam / wall:.3f}%"
        )
    elif not a.skip_grpo:
        step_s, seam_s = grpo_ratio()
        print(
            f"\nGRPO on the organism: {step_s:.2f} s per step; seam {1000 * seam_s:.2f} ms per step "
            f"= {100 * seam_s / step_s:.3f}% of a step"
        )


if __name__ == "__main__":
    main()
