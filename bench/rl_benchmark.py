"""RL on the model organism: GRPO (TRL) with the prompts chosen by curator strategies.

    nice -n 5 python bench/rl_benchmark.py                       # calibrate the lr, then compare
    nice -n 5 python bench/rl_benchmark.py --lr 1e-4 --seeds 0,1,2,3,4 --organism "organism?seed=1"

What it runs: the organism (``--organism``, default ``organism``: docs/ORGANISM.md) trained with
TRL's GRPOTrainer, reward = curator's gsm8k grader's verdict (0/1), ``--prompts`` prompts x
``--generations`` completions per step, for ``--steps`` steps, once per (strategy, seed), with the
prompts drawn by ``GRPOCuration(strategy).attach(trainer)``: ``uniform`` (the `iid` strategy: a
uniform random batch each step), ``learnability`` (p(1-p) of the latest group's pass rate),
``pass-rate-band`` (latest pass rate in [0.25, 0.75] first, then unseen prompts) and
``drop-solved-failed`` (DAPO: never a prompt whose latest group was all right or all wrong).
Greedy test accuracy on ``--test`` held-out problems every ``--eval-every`` steps (and once for
the base model, step 0), logged to MLflow (``<out>/mlflow.db``) in two experiments, ``rl-steps``
(x = optimizer steps) and ``rl-rollouts`` (x = completions generated), then read back by
``curate compare`` (curves with 95% seed bands, paired bootstrap intervals vs uniform):

    curate compare --tracking-uri sqlite:///<out>/mlflow.db --experiment rl-steps --baseline uniform

Without ``--lr`` the learning rate is calibrated first, on uniform sampling only (seed 0, each of
``--calibrate``; the best final accuracy wins), before any strategy runs. Every finished run is a
line in ``<out>/runs.jsonl``; a rerun skips the runs already there.

The organism ends its answers with "\\nDone." (the recipes' target template) and never emits its
EOS token, so the run treats the "\\nDone" token as end of sequence, as curator's samplers stop
there: without it every completion runs to max length and the text after the answer decides the
grade.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curator.data.format import PromptFormat
from curator.data.grading import get_grader
from curator.data.loaders import load_examples
from curator.evaluation import evaluate_accuracy
from curator.io import atomic_write_json
from curator.sampling.base import SamplingParams

POOL = "synthetic:easy?n={n}&seed=101&min_steps=1&max_steps=2&max_operand=10"
TEST = "synthetic:easy?n={n}&seed=102&min_steps=1&max_steps=2&max_operand=10"
FMT = PromptFormat(prompt="{question}\nAnswer:", target=" {solution}\nDone.", chat=False)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=72)
STRATEGIES: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("iid", {}),
    "learnability": ("learnability", {}),
    "pass-rate-band": ("pass-rate-band", {"lo": 0.25, "hi": 0.75}),
    "drop-solved-failed": ("drop-solved-failed", {}),
}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--organism", default="organism", help="model spec (load_model); default: the default organism")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of " + ", ".join(STRATEGIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=16, help="GRPO optimizer steps per run")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts per step")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (num_generations)")
    p.add_argument("--pool", type=int, default=128, help="training prompts")
    p.add_argument("--test", type=int, default=500, help="held-out problems (greedy accuracy)")
    p.add_argument("--lr", type=float, default=None, help="skip calibration and use this learning rate")
    p.add_argument("--calibrate", default="3e-5,1e-4,3e-4", help="learning rates tried on uniform, seed 0")
    p.add_argument("--out", default="bench/results/rl")
    return p.parse_args(argv)


class Bench:
    """The organism, data, evaluation and bookkeeping shared by every run."""

    def __init__(self, a: argparse.Namespace):
        from curator.models import load_model  # lazy: pulls in torch / transformers

        self.a, self.load_model = a, load_model
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pool = load_examples(POOL.format(n=a.pool))
        self.test = load_examples(TEST.format(n=a.test))
        self.grader = get_grader("gsm8k")
        self.uri = "sqlite:///" + str((self.out / "mlflow.db").resolve())
        self.done = {json.dumps(r["key"]): r for r in self._read("runs.jsonl")}

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.out / name
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.out / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")

    def model(self) -> tuple[Any, Any]:
        lm = self.load_model(self.a.organism)
        tok = lm.tokenizer
        done = tok.convert_tokens_to_ids("\nDone")
        lm.model.generation_config.eos_token_id = [tok.eos_token_id, done]
        return lm.model, tok

    def accuracy(self, model: Any, tok: Any) -> float:
        from curator.sampling.hf import HFSampler  # lazy: pulls in torch

        sampler = HFSampler(model, tok, batch_size=512)
        return float(evaluate_accuracy(sampler, self.test, FMT, self.grader, GREEDY).accuracy)

    def base_accuracy(self) -> float:
        path = self.out / "base.json"
        if path.exists():
            got = json.loads(path.read_text())
            if got["organism"] == self.a.organism and got["test"] == self.a.test:
                return float(got["accuracy"])
        model, tok = self.model()
        acc = self.accuracy(model, tok)
        atomic_write_json(path, {"organism": self.a.organism, "test": self.a.test, "accuracy": acc})
        return acc

    def dataset(self) -> Any:
        from datasets import Dataset  # lazy: pulls in pyarrow

        return Dataset.from_list([{"prompt": FMT.prompt_text(e), "answer": e.answer, "id": e.id} for e in self.pool])

    def run(self, label: str, seed: int, lr: float, eval_every: int) -> dict[str, Any]:
        """One GRPO run; returns its row (eval points, selections, timings)."""
        key = [label, seed, lr, self.a.steps, self.a.organism, self.a.prompts, self.a.generations, self.a.pool]
        if json.dumps(key) in self.done:
            return self.done[json.dumps(key)]
        row = train_one(self, label, seed, lr, eval_every)
        row["key"] = key
        self._append("runs.jsonl", row)
        self.done[json.dumps(key)] = row
        return row


def train_one(b: Bench, label: str, seed: int, lr: float, eval_every: int) -> dict[str, Any]:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from curator.integrations.grpo import GRPOCuration, grader_reward

    a = b.a
    model, tok = b.model()
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="curator-rl-"),  # nothing is saved (save_strategy="no")
        per_device_train_batch_size=a.prompts * a.generations,
        num_generations=a.generations,
        max_completion_length=72,
        max_steps=a.steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=seed,
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tok,
        reward_funcs=[grader_reward("gsm8k", stop=["\nDone"])],
        args=cfg,
        train_dataset=b.dataset(),
    )
    name, params = STRATEGIES[label]
    cur = GRPOCuration(name, params).attach(trainer)
    curator = cur.curator
    assert curator is not None  # attach() made it
    points: list[dict[str, Any]] = []
    seam_s: list[float] = []

    class Eval(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            s = state.global_step
            if s % eval_every == 0 or s == a.steps:
                points.append(
                    {"step": s, "rollouts": curator.rollouts, "test_accuracy": b.accuracy(trainer.model, tok)}
                )

    trainer.add_callback(Eval())
    _time_seam(cur, seam_s)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "strategy": label,
        "seed": seed,
        "lr": lr,
        "points": points,
        "train_reward": rewards,
        "wall_s": wall,
        "seam_s": float(sum(seam_s)),
        "distinct_prompts": len({p for s in curator.state_dict()["log"] for p in s}),
    }


def _time_seam(cur: Any, acc: list[float]) -> None:
    """Wrap the seam's observe and select to add their time to ``acc``."""
    c = cur.curator
    for meth in ("observe", "select"):
        f = getattr(c, meth)

        def timed(*args: Any, _f: Any = f, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return _f(*args, **kw)
            finally:
                acc.append(time.perf_counter() - t)

        setattr(c, meth, timed)


def calibrate(b: Bench) -> float:
    lrs = [float(x) for x in b.a.calibrate.split(",") if x]
    finals = {}
    for lr in lrs:
        row = b.run("uniform", 0, lr, eval_every=b.a.eval_every)  # reused by the comparison at the chosen lr
        finals[lr] = row["points"][-1]["test_accuracy"]
        print(f"calibration  lr={lr:g}  final greedy test accuracy {finals[lr]:.3f}  ({row['wall_s']:.0f} s)")
    best = max(lrs, key=lambda lr: finals[lr])
    atomic_write_json(b.out / "calibration.json", {"finals": {str(k): v for k, v in finals.items()}, "chosen": best})
    return best


def log_mlflow(b: Bench, rows: list[dict[str, Any]], base: float) -> None:
    from curator.tracking.mlflow_store import MlflowRun

    for exp, x in (("rl-steps", "step"), ("rl-rollouts", "rollouts")):
        for row in rows:
            run = MlflowRun(b.uri, exp)
            tags = {
                "strategy_label": row["strategy"],
                "seed": str(row["seed"]),
                "curator.rl_key": json.dumps(row["key"]),
            }
            found = run._find_by_tag("curator.rl_key", tags["curator.rl_key"])
            params = {"lr": str(row["lr"]), "organism": b.a.organism, "steps": str(b.a.steps)}
            run.open(found, row["strategy"], params, tags)
            run.log_metrics({"test_accuracy": base}, step=0)
            for p in row["points"]:
                run.log_metrics({"test_accuracy": p["test_accuracy"]}, step=int(p[x]))
            run.finish()


def summary(b: Bench, rows: list[dict[str, Any]], base: float, lr: float) -> str:
    """Final accuracy per strategy (mean, t interval over seeds) and paired differences vs uniform."""
    from curator.tracking.compare import t_interval

    by: dict[str, dict[int, float]] = {}
    for r in rows:
        by.setdefault(r["strategy"], {})[r["seed"]] = r["points"][-1]["test_accuracy"]
    lines = [
        f"organism {b.a.organism!r}, lr {lr:g}, {b.a.steps} steps x {b.a.prompts} prompts x {b.a.generations} "
        f"completions, pool {b.a.pool}, greedy accuracy on {b.a.test} held-out problems; base model {base:.3f}",
        "",
        "| strategy | seeds | final accuracy (mean) | 95% t interval | paired diff vs uniform "
        "| 95% paired bootstrap | beyond noise |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    uni = by.get("uniform", {})
    rng = np.random.default_rng(0)
    for label, accs in by.items():
        seeds = sorted(accs)
        v = np.array([accs[s] for s in seeds])
        lo, hi = t_interval(v[:, None])
        diff = ci = verdict = "—"
        common = [s for s in seeds if s in uni]
        if label != "uniform" and common:
            d = np.array([accs[s] - uni[s] for s in common])
            boots = np.array([d[rng.integers(len(d), size=len(d))].mean() for _ in range(4000)])
            q = np.quantile(boots, [0.025, 0.975])
            diff, ci = f"{d.mean():+.3f}", f"[{q[0]:+.3f}, {q[1]:+.3f}]"
            verdict = "yes" if q[0] > 0 or q[1] < 0 else "no"
        lines.append(
            f"| {label} | {len(seeds)} | {v.mean():.3f} | [{float(lo[0]):.3f}, {float(hi[0]):.3f}] "
            f"| {diff} | {ci} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    b = Bench(a)
    t0 = time.perf_counter()
    base = b.base_accuracy()
    print(f"base organism {a.organism!r}: greedy accuracy {base:.3f} on {a.test} held-out problems")
    lr = a.lr if a.lr is not None else calibrate(b)
    labels = [s for s in a.strategies.split(",") if s]
    unknown = [s for s in labels if s not in STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategy label(s) {unknown}; known: {', '.join(STRATEGIES)}")
    rows = []
    for seed in [int(s) for s in a.seeds.split(",") if s]:
        for label in labels:
            row = b.run(label, seed, lr, a.eval_every)
            rows.append(row)
            last = row["points"][-1]["test_accuracy"]
            print(
                f"{label:20s} seed {seed}: final {last:.3f}  "
                f"train reward {np.mean(row['train_reward']):.3f}  {row['wall_s']:.0f} s"
            )
    log_mlflow(b, rows, base)
    table = summary(b, rows, base, lr)
    seam = sum(r["seam_s"] for r in rows) / max(1, sum(r["wall_s"] for r in rows))
    table += f"\n\nseam (observe + select) time / GRPO training time over all runs: {100 * seam:.3f}%"
    table += f"\nbenchmark wall time this invocation: {time.perf_counter() - t0:.0f} s"
    (b.out / "summary.md").write_text(table + "\n")
    print(table)
    from curator.tracking.compare import compare_mlflow

    for exp in ("rl-steps", "rl-rollouts"):
        res = compare_mlflow(b.uri, exp, baseline="uniform", out_dir=b.out / exp)
        print(f"\n## {exp}\n{res.table}")
    if math.isnan(base):
        raise SystemExit("no test problems")


if __name__ == "__main__":
    main()
