"""Lazy and deferred vs full dynamics tracking on a small synthetic run: tokens, wall time, PreMemAcc.

One finetuning run; at every checkpoint the same model state is measured five ways:

1. full tracking with the live sampler (k samples for every example), recording every completion;
2. lazy tracking with the live sampler (timed);
3. deferred lazy tracking with the live sampler (timed; at the final checkpoint it loads the
   earlier weights back, samples them, and restores the final weights);
4. / 5. lazy and deferred tracking replaying the completions of (1) at each checkpoint in order,
   so that they see exactly the samples full tracking saw: their final PreMemAcc must equal full
   tracking's, and their token counts are what they generate for those samples (the token
   comparison on identical samples).

Live passes draw their own random samples, so their PreMemAcc matches (1) only in distribution;
with --temperature 0 sampling is greedy and all passes agree exactly.

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
        self.accepts_counts = getattr(inner, "accepts_counts", False)
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
    """Serves the completions a full-tracking pass drew at one checkpoint, in order, and their log-probs."""

    accepts_counts = True

    def __init__(self, log: dict[str, list[str]], logprobs, tokenizer):
        self.log, self.cursor, self.lp, self.tokenizer = log, {}, logprobs, tokenizer
        self.tokens = 0

    def generate(self, prompts, n, params):
        out = []
        for p, c in zip(prompts, [n] * len(prompts) if isinstance(n, int) else n):
            j = self.cursor.get(p, 0)
            comps = self.log[p][j : j + c]
            self.cursor[p] = j + c
            self.tokens += sum(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in comps)
            out.append(comps)
        return out

    def target_logprobs(self, prompts, targets):
        return self.lp


def oracle_samples(ledger, p: float, k: int) -> int:
    """The fewest samples any exact scheme could draw to determine every final PreMemAcc of a fully
    tracked ledger, if it knew each sample's outcome in advance (a lower bound for lazy tracking).

    Per example, with A the final correct count and R the max correct count over intermediate
    checkpoints where it is not memorized: not memorized at the end -> k (PreMemAcc = Acc).
    Memorized -> the cheaper of two proofs: PreMemAcc = R (needs R <= A: one max cell complete, every
    other cell k - R wrong samples, R correct final samples) or PreMemAcc = A (needs A <= R: the
    final cell complete, A correct samples in one intermediate cell).
    """
    c = ledger.pivot("n_correct").to_numpy()
    mem = (ledger.pivot("perplexity") <= p).to_numpy()
    last = c.shape[1] - 1
    total = 0
    for i in range(len(c)):
        A = int(c[i, last])
        if not mem[i, last]:
            total += k
            continue
        cells = [int(c[i, j]) for j in range(last) if not mem[i, j]]
        R = max(cells, default=0)
        options = []
        if R <= A:
            options.append((k + (len(cells) - 1) * (k - R) if cells else 0) + R)
        if A <= R:
            options.append(k + A)
        total += min(options)
    return total


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
    ap.add_argument("--out", default=None, help="write every pass's ledger here (<pass>.parquet)")
    ap.add_argument(
        "--oracle",
        default=None,
        metavar="LEDGER",
        help="only print the oracle lower bound of a fully tracked ledger file, then exit",
    )
    args = ap.parse_args(argv)
    if args.oracle:
        from curator.dynamics.ledger import read_ledger

        led = read_ledger(args.oracle)
        n = oracle_samples(led, led.p, led.k)
        print(f"oracle: {n} of {int(led.df.n_samples.sum())} samples ({n / max(int(led.df.n_samples.sum()), 1):.3f})")
        return

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
    params = SamplingParams(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, stop=fmt.stop, seed=args.seed
    )
    kw = dict(k=args.k, params=params, p=args.p, n_checkpoints=n_ckpt, tokenizer=tok)
    full = DynamicsTracker(examples, fmt, grader, lazy=False, **kw)
    trackers = {
        "lazy": DynamicsTracker(examples, fmt, grader, lazy=True, **kw),
        "deferred": DynamicsTracker(examples, fmt, grader, lazy=True, defer=True, **kw),
    }
    replays = {
        "lazy": DynamicsTracker(examples, fmt, grader, lazy=True, **kw),
        "deferred": DynamicsTracker(examples, fmt, grader, lazy=True, defer=True, **kw),
    }
    tokens = {"full": 0, "lazy": 0, "deferred": 0, "lazy replayed": 0, "deferred replayed": 0}
    seconds = {"full": 0.0, "lazy": 0.0, "deferred": 0.0}
    logs, lps = {}, {}  # per checkpoint: full tracking's completions and target log-probs

    def on_checkpoint(m, info):
        base = HFSampler(m, tok, batch_size=args.batch_size)
        fs = CountingSampler(base, tok, record=True)
        t0 = time.perf_counter()
        full.measure(fs, info)
        tokens["full"] += fs.tokens
        seconds["full"] += time.perf_counter() - t0
        logs[info.index], lps[info.index] = fs.log, base.target_logprobs(full.prompts, full.targets)
        line = [f"checkpoint {info.index}: full {fs.samples} samples / {fs.tokens} tokens"]
        for name, tr in trackers.items():
            live: list[CountingSampler] = []

            def factory(model, live=live):  # the deferred pass re-samples earlier weights through this
                live.append(CountingSampler(HFSampler(model, tok, batch_size=args.batch_size), tok))
                return live[-1]

            t0 = time.perf_counter()
            tr.measure(factory(m), info, model=m, sampler_factory=factory)
            seconds[name] += time.perf_counter() - t0
            tokens[name] += sum(c.tokens for c in live)
            line.append(f"{name} {sum(c.samples for c in live)} / {sum(c.tokens for c in live)}")
        for name, tr in replays.items():
            played: list[ReplaySampler] = []

            def replay_factory(model, tr=tr, played=played):  # serve the completions full tracking drew back then
                j = info.index if tr.replaying is None else tr.replaying
                played.append(ReplaySampler(logs[j], lps[j], tok))
                return played[-1]

            tr.measure(replay_factory(m), info, model=m, sampler_factory=replay_factory)
            tokens[f"{name} replayed"] += sum(r.tokens for r in played)
            line.append(f"{name} replayed {sum(r.tokens for r in played)} tokens")
        print(", ".join(line), flush=True)

    t0 = time.perf_counter()
    finetune(model, tok, examples, fmt, settings, on_checkpoint=on_checkpoint, progress=False)
    total = time.perf_counter() - t0
    lf = full.ledger()
    final = lf.checkpoints[-1]
    pf = M.premem_acc(lf)[final]
    print(
        f"\nmodel {args.model}, {args.n} examples, {args.epochs} epochs ({n_ckpt} checkpoints), "
        f"k={args.k}, p={args.p}, T={args.temperature}, max_new_tokens={args.max_new_tokens}; "
        f"run {total:.1f}s incl. training"
    )
    print(f"fraction memorized per checkpoint: {np.round(M.fraction_memorized(lf).to_numpy(), 3).tolist()}")
    print(f"final train acc (full): {M.train_accuracy(lf).iloc[-1]:.3f}")
    print(
        f"{'pass':>18} {'samples':>8} {'tokens':>8} {'tok ratio':>9} {'seconds':>8} {'s ratio':>8} "
        f"{'calls':>6}  final PreMemAcc"
    )
    rows = [("full", full)] + list(trackers.items()) + [(f"{n} replayed", t) for n, t in replays.items()]
    identical = True
    for name, tr in rows:
        led = tr.ledger()
        if args.out:
            led.to_parquet(f"{args.out}/{name.replace(' ', '-')}.parquet")
        pm = M.premem_acc(led)[final]
        sec = seconds.get(name)
        s_txt = f"{sec:8.1f} {sec / max(seconds['full'], 1e-9):8.3f}" if sec is not None else f"{'-':>8} {'-':>8}"
        print(
            f"{name:>18} {tr.samples_drawn:8d} {tokens[name]:8d} {tokens[name] / max(tokens['full'], 1):9.3f} "
            f"{s_txt} {tr.generate_calls:6d}  {M.dataset_premem(led).iloc[-1]:.4f}"
        )
        if "replayed" in name and not np.array_equal(pm.to_numpy(), pf.to_numpy()):
            identical = False
            print(f"  !! {name}: per-example final PreMemAcc differs from full tracking")
    orc = oracle_samples(lf, args.p, args.k)
    print(
        f"oracle lower bound (knowing every outcome in advance): {orc} samples, "
        f"{orc / max(full.samples_drawn, 1):.3f} of full"
    )
    print(f"final per-example PreMemAcc identical to full tracking (replayed passes): {identical}")
    if not identical:
        raise SystemExit("lazy or deferred tracking changed PreMemAcc: this is a bug")


if __name__ == "__main__":
    main()
