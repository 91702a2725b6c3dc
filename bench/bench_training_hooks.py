"""Cost of finetune's training hooks (grad_variance's running gradient sum) on a real model.

    python bench/bench_training_hooks.py [--model smollm2-135m-instruct] [--n 16] [--repeats 2]

Trains the same steps with track_grad_variance on and off, alternating, in one process, and
prints seconds per optimizer step for LoRA and for full finetuning. dist_from_init costs one
parameter-sized copy per checkpoint and is included in both.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from curator.data.loaders import load_examples
from curator.models import LoraSettings, apply_lora, load_model
from curator.training import TrainSettings, finetune


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = load_examples(f"synthetic:easy?n={args.n}&seed=0")
    for mode in ("lora", "full"):
        times = {True: [], False: []}
        for _ in range(args.repeats):
            for track in (False, True):
                lm = load_model(args.model, device="cpu")
                model = apply_lora(lm.model, LoraSettings()) if mode == "lora" else lm.model
                n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
                s = TrainSettings(epochs=1, batch_size=args.batch_size, learning_rate=1e-4, track_grad_variance=track)
                res = finetune(model, lm.tokenizer, examples, None, s, progress=False)
                times[track].append(res.train_seconds / res.steps)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(
            f"{args.model} {mode:4s} trainable={n_train / 1e6:.2f}M  s/step: hooks off {off:.3f}, "
            f"grad_variance on {on:.3f}  overhead {100 * (on / off - 1):+.1f}%  "
            f"(median of {args.repeats}, {res.n_tokens / res.steps:.0f} tokens/step)"
        )


if __name__ == "__main__":
    main()
