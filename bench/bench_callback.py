"""PreMemCallback's cost inside a TRL SFTTrainer run vs `curate measure` on the same checkpoints.

Per repeat, in one process and in alternating order:

1. a plain SFTTrainer run that saves a checkpoint per epoch (timed: T_plain);
2. the same run with `PreMemCallback` attached (timed: T_callback; the callback also times its
   own measurement, M_callback);
3. `measure_checkpoints` over the checkpoints run (1) saved (timed: T_measure, which includes
   loading each checkpoint from disk).

The callback adds no more than the measurement itself when (T_callback - T_plain) / T_measure
is about 1 (a little below: the callback needs no checkpoint loading); ``own_ratio`` =
M_callback / T_measure is the same comparison without the noise of two training runs. Both
ledgers are compared: they must be equal (same weights, seeds, batches).

    python bench/bench_callback.py                                  # tiny random model, ~1 min
    python bench/bench_callback.py --model smollm2-135m-instruct --n 16 --epochs 2 --lr 1e-4
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--data", default="synthetic:easy?n=64&seed=0")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import pandas as pd
    import torch
    from accelerate.state import AcceleratorState, GradientState
    from trl import SFTConfig, SFTTrainer

    from curator.data.loaders import load_examples
    from curator.dynamics.settings import MeasureSettings
    from curator.export import trl_dataset
    from curator.integrations import PreMemCallback
    from curator.measure import measure_checkpoints
    from curator.models import load_model
    from curator.sampling.base import SamplingParams

    torch.set_num_threads(args.threads)
    examples = load_examples(args.data, limit=args.n)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, seed=0)
    ds = trl_dataset(examples)
    root = Path(tempfile.mkdtemp(prefix="bench-callback-"))

    def train(out: Path, with_callback: bool):
        lm = load_model(args.model)
        cfg = SFTConfig(
            output_dir=str(out),
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            save_strategy="epoch",
            save_only_model=True,
            logging_steps=1,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            seed=0,
            disable_tqdm=True,
            max_length=512,
        )
        trainer = SFTTrainer(model=lm.model, args=cfg, train_dataset=ds, processing_class=lm.tokenizer)
        cb = (
            PreMemCallback(examples, measure=MeasureSettings(k=args.k, params=params), progress=False).attach(trainer)
            if with_callback
            else None
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        AcceleratorState._reset_state(reset_partial_state=True)  # the next Trainer starts clean
        GradientState._reset_state()
        return seconds, cb

    rows = []
    try:
        for rep in range(args.repeats):
            order = [False, True] if rep % 2 == 0 else [True, False]
            times, cb = {}, None
            for with_cb in order:
                out = root / f"r{rep}-{'cb' if with_cb else 'plain'}"
                times[with_cb], c = train(out, with_cb)
                cb = c or cb
            t0 = time.perf_counter()
            ledger = measure_checkpoints(
                [root / f"r{rep}-plain"], examples, measure=MeasureSettings(k=args.k, params=params), progress=False
            )
            t_measure = time.perf_counter() - t0
            pd.testing.assert_frame_equal(ledger.df, cb.ledger.df)
            rows.append(
                {
                    "plain_s": times[False],
                    "callback_s": times[True],
                    "callback_measure_s": cb.measure_seconds,
                    "measure_s": t_measure,
                    "ratio": (times[True] - times[False]) / t_measure,
                    "own_ratio": cb.measure_seconds / t_measure,
                }
            )
            print(
                f"repeat {rep}: plain {times[False]:.1f}s, with callback {times[True]:.1f}s "
                f"(its measurement {cb.measure_seconds:.1f}s), curate measure {t_measure:.1f}s, "
                f"(callback - plain) / measure = {rows[-1]['ratio']:.2f}; ledgers equal",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [r["ratio"] for r in rows]
    print(
        f"\n{args.model}, {args.n} examples, {args.epochs} checkpoints, k={args.k}, "
        f"max_new_tokens={args.max_new_tokens}, {args.threads} thread(s)"
    )
    print(pd.DataFrame(rows).round(2).to_string())
    own = [r["own_ratio"] for r in rows]
    print(
        f"median (callback - plain) / measure: {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}); callback's own measurement / measure: "
        f"{statistics.median(own):.2f} (range {min(own):.2f}-{max(own):.2f})"
    )


if __name__ == "__main__":
    main()
