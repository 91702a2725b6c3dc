"""Lazy vs full dynamics tracking on a small synthetic run: tokens generated, wall time, PreMemAcc.

One finetuning run; at every checkpoint the same model state is measured three ways:

1. full tracking with the live sampler (k samples for every example), recording every completion;
2. lazy tracking with the live sampler (timed: the wall-time comparison);
3. lazy tracking replaying the completions of (1) in order, so that it sees exactly the samples
   full tracking saw: its PreMemAcc must equal full tracking's, and its token count is what
   lazy tracking generates for those samples (the token comparison on identical samples).

Live lazy (2) draws its own random samples, so its PreMemAcc matches (1) only in distribution;
with --temperature 0 sampling is greedy and all three agree exactly.

    python bench/bench_lazy.py                        # tiny random model, seconds
    python bench/bench_lazy.py --model smollm2-135m-instruct --n 16 --epochs 5 --lr 1e-4 --threads 1
    python bench/bench_lazy.py --data sums.jsonl --n 12 --epochs 12 --lr 3e-3 --batch-size-train 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np


class CountingSampler:
    """Wraps a Sampler; counts generated tokens and records completions per prompt."""

    def __init__(self, inner, tokenizer, record: bool = False):
        self.inner, self.tokenizer, self.record = inner, tokenizer, record
        self.tokens = 0
        self.samples = 0
        self.seconds = 0.0
        self.log: dict[str, list[str]] = {}

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts, n, params):
        t0 = time.perf_counter()
        outs = self.inner.generate(prompts, n, params)
        self.seconds += time.perf_counter() - t0
        for p, comps in zip(prompts, outs):
            self.samples += len(comps)
            self.tokens += sum(self.count(c) for c in comps)
            if self.record:
                self.log.setdefault(p, []).extend(comps)
        return outs

    def target_logprobs(self, prompts, targets):
        t0 = time.perf_counter()
        out = self.inner.target_logprobs(prompts, targets)
        self.seconds += time.perf_counter() - t0
        return out


class ReplaySampler:
    """Serves the completions a full-tracking pass drew, in order, and their log-probs."""

    def __init__(self, log: dict[str, list[str]], logprobs, tokenizer):
        self.log, self.cursor, self.lp, self.tokenizer = log, {}, logprobs, tokenizer
        self.tokens = 0

    def generate(self, prompts, n, params):
        out = []
        for p in prompts:
            j = self.cursor.get(p, 0)
            comps = self.log[p][j: j + n]
            self.cursor[p] = j + n
            self.tokens += sum(len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in comps)
            out.append(comps)
        return out

    def target_logprobs(self, prompts, targets):
        return self.lp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--data", default=None, help="a load_examples source (default: SyntheticTask problems)")
    ap.add_argument("--n", type=int, default=24, help="training examples")
    ap.add_argument("--batch-size-train", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--p", type=float, default=1.105)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32, help="sampler batch size")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (same for all passes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from curator.data.format import PromptFormat
    from curator.data.grading import get_grader
    from curator.data.synthetic import SyntheticTask
    from curator.dynamics import metrics as M
    from curator.dynamics.tracker import DynamicsTracker
    from curator.models import load_model
    from curator.sampling.base import SamplingParams
    from curator.sampling.hf import HFSampler
    from curator.training import TrainSettings, finetune

    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    if args.lora:
        from curator.models import LoraSettings, apply_lora

        model = apply_lora(model, LoraSettings())
    if args.data:
        from curator.data.loaders import load_examples

        examples = load_examples(args.data, limit=args.n)
    else:
        examples = SyntheticTask().generate(args.n, seed=args.seed)
    fmt = PromptFormat()
    grader = get_grader("gsm8k")
    lr = args.lr or (1e-3 if args.lora or args.model == "tiny-random" else 1e-4)
    settings = TrainSettings(epochs=args.epochs, learning_rate=lr, batch_size=args.batch_size_train, seed=args.seed)
    n_ckpt = settings.n_checkpoints(len(examples))
    params = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                            stop=fmt.stop, seed=args.seed)
    kw = dict(k=args.k, params=params, p=args.p, n_checkpoints=n_ckpt, tokenizer=tok)
    full = DynamicsTracker(examples, fmt, grader, lazy=False, **kw)
    lazy = DynamicsTracker(examples, fmt, grader, lazy=True, **kw)
    replay = DynamicsTracker(examples, fmt, grader, lazy=True, **kw)
    stats = {"full": [0, 0.0], "lazy": [0, 0.0], "replay": [0]}

    def on_checkpoint(m, info):
        base = HFSampler(m, tok, batch_size=args.batch_size)
        fs = CountingSampler(base, tok, record=True)
        t0 = time.perf_counter()
        full.measure(fs, info)
        stats["full"][0] += fs.tokens
        stats["full"][1] += time.perf_counter() - t0
        ls = CountingSampler(base, tok)
        t0 = time.perf_counter()
        lazy.measure(ls, info)
        stats["lazy"][0] += ls.tokens
        stats["lazy"][1] += time.perf_counter() - t0
        lp = base.target_logprobs(full.prompts, full.targets)
        rs = ReplaySampler(fs.log, lp, tok)
        replay.measure(rs, info)
        stats["replay"][0] += rs.tokens
        print(f"checkpoint {info.index}: full {fs.samples} samples / {fs.tokens} tokens, "
              f"lazy {ls.samples} / {ls.tokens}, replayed lazy {rs.tokens} tokens", flush=True)

    t0 = time.perf_counter()
    finetune(model, tok, examples, fmt, settings, on_checkpoint=on_checkpoint, progress=False)
    total = time.perf_counter() - t0
    lf, ll, lr_ = full.ledger(), lazy.ledger(), replay.ledger()
    pf, pl, pr = M.dataset_premem(lf), M.dataset_premem(ll), M.dataset_premem(lr_)
    print(f"\nmodel {args.model}, {args.n} examples, {args.epochs} epochs ({n_ckpt} checkpoints), "
          f"k={args.k}, p={args.p}, T={args.temperature}, max_new_tokens={args.max_new_tokens}; "
          f"run {total:.1f}s incl. training")
    print(f"fraction memorized per checkpoint: {np.round(M.fraction_memorized(lf).to_numpy(), 3).tolist()}")
    print(f"final train acc (full): {M.train_accuracy(lf).iloc[-1]:.3f}")
    print(f"{'pass':>22} {'samples':>8} {'tokens':>8} {'seconds':>8}  final PreMemAcc")
    print(f"{'full':>22} {full.samples_drawn:8d} {stats['full'][0]:8d} {stats['full'][1]:8.1f}  {pf.iloc[-1]:.4f}")
    print(f"{'lazy (live)':>22} {lazy.samples_drawn:8d} {stats['lazy'][0]:8d} {stats['lazy'][1]:8.1f}  {pl.iloc[-1]:.4f}")
    print(f"{'lazy (replayed full)':>22} {replay.samples_drawn:8d} {stats['replay'][0]:8d} {'-':>8}  {pr.iloc[-1]:.4f}")
    same = np.array_equal(M.premem_acc(lr_)[lf.checkpoints[-1]].to_numpy(), M.premem_acc(lf)[lf.checkpoints[-1]].to_numpy())
    ratio_tok = stats["replay"][0] / max(stats["full"][0], 1)
    print(f"replayed lazy / full tokens: {ratio_tok:.3f}; live lazy / full tokens: "
          f"{stats['lazy'][0] / max(stats['full'][0], 1):.3f}; live wall time ratio: "
          f"{stats['lazy'][1] / max(stats['full'][1], 1e-9):.3f}")
    print(f"generate calls: full {full.generate_calls}, lazy (live) {lazy.generate_calls}")
    print(f"final per-example PreMemAcc identical (replayed lazy vs full): {same}")
    if not same:
        raise SystemExit("lazy tracking changed PreMemAcc: this is a bug")


if __name__ == "__main__":
    main()
