"""The organism's regime map (issue 19): where finetuning helps and where training sets are memorized.

For every organism spec x finetuning learning rate x epochs x training-set size x seed, finetune
the organism on an i.i.d. training set with curator's own round engine (`train_and_track`, the call
the active loop makes, with the recipe's format, tracking and test settings), and record one JSON
line: greedy test accuracy on the recipe's 500 test problems, final train accuracy (k samples at
the recipe's temperature), the share memorized at the final checkpoint (target perplexity <= p),
mean final PreMemAcc and its gap to train accuracy, and wall seconds. The base organism's test
accuracy is one line per spec. Rerunning skips the cells already in the results file.

    python bench/regime_map.py --organisms "organism;organism?verbose_share=1.0" \
        --lrs 0.001,0.003 --epochs 4,8 --sizes 16,64,256 --seeds 0 --out bench/results/regime/screen.jsonl
    python bench/regime_map.py --out bench/results/regime/screen.jsonl --table   # print only

Training sets: the first n of one i.i.d. draw of the recipe's task family per seed (nested, so the
curve over n is one draw growing). Tracking is full (lazy off), so train accuracy is known at the
final checkpoint for every example.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BASE = "base"


def parse_floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def cell_key(row: dict[str, Any]) -> tuple:
    if row["kind"] == BASE:
        return (BASE, row["organism"])
    return (
        "cell",
        row["organism"],
        float(row["lr"]),
        int(row["epochs"]),
        int(row["n"]),
        int(row["seed"]),
        int(row["batch_size"]),
        row["scheduler"],
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one line per finished cell: an interrupted run loses at most one cell
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()


class Organism:
    """One organism spec, loaded once, with the recipe's test set, grader and sampler provider."""

    def __init__(self, spec: str, recipe: Any, test_n: int):
        from curator.data.grading import get_grader
        from curator.data.loaders import load_examples
        from curator.models import load_model
        from curator.sampling.providers import make_provider

        self.spec, self.recipe = spec, recipe
        self.base = load_model(spec, dtype="float32")
        self.test = load_examples(recipe.data.test, limit=test_n)
        self.grader = get_grader(recipe.data.grader)
        self.provider = make_provider("hf", self.base, batch_size=recipe.dynamics.batch_size)

    def finetune(self, train: list[Any], training: Any, seed: int, lazy: bool) -> Any:
        """A fresh copy of the organism finetuned on ``train`` the way one loop round does (the
        recipe's format, tracking and test settings; ``lazy`` False: train accuracy at every
        checkpoint); the engine's `RoundResult`."""
        from curator.engine import ModelStart, TestEval, train_and_track

        rec, dyn, ev = self.recipe, self.recipe.dynamics, self.recipe.evaluation
        return train_and_track(
            self.base,
            train,
            fmt=rec.format,
            grader=self.grader,
            training=training,
            provider=self.provider,
            measure=dataclasses.replace(dyn.measure_settings(rec.format.stop, seed=seed), lazy=lazy),
            start=ModelStart(lora=None, seed=seed),
            test=TestEval(self.test, ev.sampling(rec.format.stop, seed, top_p=dyn.top_p), ev.samples),
            progress=False,
        )

    def skill_accuracy(self, model: Any, seed: int) -> dict[str, float]:
        """Test accuracy per skill (and ``all``), sampled as the loop's test evaluation samples."""
        from curator.evaluation import grade_completions

        rec = self.recipe
        params = rec.evaluation.sampling(rec.format.stop, seed, top_p=rec.dynamics.top_p)
        prompts = [rec.format.prompt_text(e, self.base.tokenizer) for e in self.test]
        completions = self.provider.sampler(model).generate(prompts, rec.evaluation.samples, params)
        out = {"all": grade_completions(self.test, completions, self.grader).accuracy}
        for skill in sorted({e.meta.get("skill", "") for e in self.test}):
            idx = [i for i, e in enumerate(self.test) if e.meta.get("skill", "") == skill]
            sub = grade_completions([self.test[i] for i in idx], [completions[i] for i in idx], self.grader)
            out[skill] = round(sub.accuracy, 4)
        return out


def training_set(recipe: Any, n_max: int, seed: int) -> list[Any]:
    """The first ``n_max`` of seed ``seed``'s i.i.d. draw from the recipe's task family."""
    from curator.data.loaders import synthetic_task_from_source

    task = synthetic_task_from_source(recipe.data.pool)
    return task.generate(n_max, seed=90_000 + seed)


def run_cell(org: Organism, train: list[Any], lr: float, epochs: int, seed: int, args: argparse.Namespace) -> dict:
    """Finetune a fresh copy of the organism on ``train`` the way one loop round does; the row."""
    from curator.dynamics import metrics

    rec = org.recipe
    training = dataclasses.replace(
        rec.training,
        learning_rate=lr,
        epochs=epochs,
        batch_size=args.batch_size,
        lr_scheduler=args.scheduler,
        seed=seed,
    )
    t0 = time.time()
    res = org.finetune(train, training, seed, lazy=False)
    skills = org.skill_accuracy(res.model, seed)
    skills.pop("all")
    ledger = res.ledger
    last = max(ledger.pivot("perplexity").columns)
    train_acc = float(metrics.train_accuracy(ledger)[last])
    premem = float(metrics.dataset_premem(ledger)[last])
    return {
        "kind": "cell",
        "organism": org.spec,
        "lr": lr,
        "epochs": epochs,
        "n": len(train),
        "seed": seed,
        "batch_size": args.batch_size,
        "scheduler": args.scheduler,
        "test_acc": float(res.test_accuracy),
        "train_acc": train_acc,
        "memorized": float(metrics.fraction_memorized(ledger)[last]),
        "premem": premem,
        "gap": train_acc - premem,
        "final_nll": float(res.checkpoints[-1].get("train_loss", float("nan"))) if res.checkpoints else float("nan"),
        "skills": skills,
        "seconds": round(time.time() - t0, 1),
    }


def run_grid(args: argparse.Namespace) -> None:
    from curator.console import progress
    from curator.recipes import load_recipe

    out = Path(args.out)
    done = {cell_key(r) for r in read_rows(out)}
    recipe = load_recipe(args.recipe)
    specs = [s.strip() for s in args.organisms.split(";") if s.strip()]
    lrs, epochs, sizes, seeds = (
        parse_floats(args.lrs),
        parse_ints(args.epochs),
        parse_ints(args.sizes),
        parse_ints(args.seeds),
    )
    todo = [
        (spec, lr, ep, n, s)
        for spec in specs
        for s in seeds
        for n in sizes
        for lr in lrs
        for ep in epochs
        if ("cell", spec, lr, ep, n, s, args.batch_size, args.scheduler) not in done
    ]
    bar = progress(total=len(todo) + sum((BASE, s) not in done for s in specs), desc="regime map", unit="cell")
    for spec in specs:
        cells = [c for c in todo if c[0] == spec]
        if not cells and (BASE, spec) in done:
            continue
        org = Organism(spec, recipe, args.test_n)
        if (BASE, spec) not in done:
            t0 = time.time()
            acc = org.skill_accuracy(org.base.model, recipe.seed)
            append_row(
                out,
                {
                    "kind": BASE,
                    "organism": spec,
                    "test_acc": acc.pop("all"),
                    "skills": acc,
                    "seconds": round(time.time() - t0, 1),
                },
            )
            bar.update(1)
        draws: dict[int, list[Any]] = {}
        for _, lr, ep, n, s in cells:
            if s not in draws:
                draws[s] = training_set(recipe, max(sizes), s)
            row = run_cell(org, draws[s][:n], lr, ep, s, args)
            append_row(out, row)
            bar.update(1)
            bar.set_postfix(n=n, lr=lr, ep=ep, test=f"{row['test_acc']:.3f}", train=f"{row['train_acc']:.2f}")
    bar.close()


def table(rows: list[dict[str, Any]]) -> str:
    """Mean (and range over seeds) per (organism, lr, epochs, batch, scheduler, n)."""
    base = {r["organism"]: r["test_acc"] for r in rows if r["kind"] == BASE}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["kind"] != BASE:
            groups[(r["organism"], r["lr"], r["epochs"], r["batch_size"], r["scheduler"], r["n"])].append(r)
    lines = [
        "| organism | base | lr | ep | bs | sched | n | seeds | test | train | memorized | PreMemAcc | gap | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups):
        g = groups[key]

        def m(f: str, g: list[dict] = g) -> str:
            vals = [x[f] for x in g]
            mean = sum(vals) / len(vals)
            return f"{mean:.3f}" + (f" ({min(vals):.2f}-{max(vals):.2f})" if len(vals) > 1 else "")

        org, lr, ep, bs, sched, n = key
        lines.append(
            f"| {org} | {base.get(org, float('nan')):.3f} | {lr:g} | {ep} | {bs} | {sched} | {n} | {len(g)} | "
            f"{m('test_acc')} | {m('train_acc')} | {m('memorized')} | {m('premem')} | {m('gap')} | "
            f"{sum(x['seconds'] for x in g) / len(g):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--organisms", default="organism", help="';'-separated organism specs")
    ap.add_argument("--recipe", default="demo", help="recipe whose format, data, tracking and test settings are used")
    ap.add_argument("--lrs", default="0.001")
    ap.add_argument("--epochs", default="4")
    ap.add_argument("--sizes", default="16,64,256")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--scheduler", default="constant")
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/regime/map.jsonl")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    if not args.table:
        import torch

        torch.set_num_threads(args.threads)
        run_grid(args)
    print(table(read_rows(Path(args.out))))


if __name__ == "__main__":
    main()
