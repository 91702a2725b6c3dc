"""Cost of probe logging: an SFT -> DPO run with and without the probe families, in one process.

    python bench/bench_probes.py [--model tiny-random|smollm2-135m-instruct] [--probes 4] [--eval-every 5]

Both arms train the same stages on the same rows from the same weights; the probed arm also makes
the greedy responses, scores every family at step 0 and every `--eval-every` optimizer steps (and
at each stage's end), as `curate probes` does; the unprobed arm checkpoints once per epoch. The
arms alternate, `--repeats` times each, and the figure is the ratio of median wall times. The
default probe size is `ProbeSettings()`'s (4 probes x 10 families, every 10 steps). Target: <= 20%.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace

import torch

from curator.data.format import PromptFormat
from curator.models import LoraSettings, apply_lora, load_model
from curator.probes.families import build_probe_set, greedy_responses
from curator.probes.preferences import load_preferences
from curator.probes.run import ProbeSettings
from curator.probes.scoring import ProbeLogger
from curator.sampling.hf import HFSampler
from curator.training import TrainSettings, finetune
from curator.training.dpo import PreferencePair, dpo_finetune


def run(
    base, tok, rows, test, probes: ProbeSettings | None, sft: TrainSettings, dpo: TrainSettings
) -> tuple[float, float, float]:
    """Wall seconds of SFT then DPO from a copy of `base`; of those, seconds scoring and seconds
    making the greedy responses (once, before training)."""
    model = copy.deepcopy(base)
    fmt = PromptFormat()
    pairs = [
        PreferencePair(
            fmt.prompt_text(r.example()), fmt.target_text(r.example("chosen")), fmt.target_text(r.example("rejected"))
        )
        for r in rows
    ]
    t0 = time.perf_counter()
    cb, logger, greedy_s = None, None, 0.0
    if probes is not None:
        greedy = greedy_responses(HFSampler(model, tok), rows[: probes.n], fmt, tok, probes.greedy_max_new_tokens)
        greedy_s = time.perf_counter() - t0
        pset = build_probe_set(rows[: probes.n], rows, test, unrelated=probes.unrelated, greedy=greedy)
        logger = ProbeLogger(pset, fmt, tok, batch_size=probes.batch_size)
        logger.log(model, stage="init", stage_index=0, step=0, stage_step=0, epoch=0.0)

        def cb(m, info):
            logger.log(m, stage="x", stage_index=1, step=info.step, stage_step=info.step, epoch=info.epoch)

        # as run_probes does: a stage shorter than eval_every is still evaluated
        sft = replace(sft, checkpoint_every=min(probes.eval_every, sft.total_steps(len(rows), 1)))
        dpo = replace(dpo, checkpoint_every=min(probes.eval_every, dpo.total_steps(len(rows), 1)))
    finetune(model, tok, [r.example("chosen") for r in rows], fmt, sft, on_checkpoint=cb, progress=False)
    dpo_finetune(model, tok, pairs, dpo, on_checkpoint=cb, progress=False)
    wall = time.perf_counter() - t0
    return wall, (logger.seconds if logger else 0.0), greedy_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--lora", action="store_true", help="LoRA adapters (r=16) instead of full finetuning")
    ap.add_argument("--rows", type=int, default=32, help="preference rows trained on")
    ap.add_argument("--probes", type=int, default=ProbeSettings().n)
    ap.add_argument("--eval-every", type=int, default=ProbeSettings().eval_every)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each stage")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = load_preferences(f"synthetic:easy?n={args.rows}&seed=0&max_steps=2&max_operand=10")
    test = load_preferences("synthetic:easy?n=8&seed=1&max_steps=2&max_operand=10")
    lm = load_model(args.model, device="cpu")
    base = apply_lora(lm.model, LoraSettings(dropout=0.0)) if args.lora else lm.model
    lr = 1e-3 if (args.lora or args.model == "tiny-random") else 1e-5
    sft = TrainSettings(epochs=args.epochs, learning_rate=lr, batch_size=args.batch_size, track_grad_variance=False)
    dpo = replace(sft, learning_rate=lr / 2)
    probes = ProbeSettings(n=args.probes, eval_every=args.eval_every)
    steps = 2 * sft.total_steps(len(rows), 1)
    times: dict[bool, list[float]] = {False: [], True: []}
    probe_s, greedy_s = [], []
    for _ in range(args.repeats):
        for on in (False, True):
            wall, ps, gs = run(base, lm.tokenizer, rows, test, probes if on else None, sft, dpo)
            times[on].append(wall)
            if on:
                probe_s.append(ps)
                greedy_s.append(gs)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    per_stage = sft.total_steps(len(rows), 1)
    evals = 1 + 2 * len(range(min(args.eval_every, per_stage), per_stage + 1, min(args.eval_every, per_stage)))
    print(
        f"{args.model}{' lora' if args.lora else ''}: {len(rows)} rows, {steps} optimizer steps (SFT + DPO), "
        f"{args.probes} probes x 10 families every {args.eval_every} steps ({evals} evaluations)"
    )
    score, greedy = statistics.median(probe_s), statistics.median(greedy_s)
    print(
        f"  wall s: without probes {off:.2f}, with probes {on:.2f}  overhead {100 * (on / off - 1):+.1f}%  "
        f"(median of {args.repeats})"
    )
    print(
        f"  of which: scoring {score:.2f}s ({100 * score / off:.1f}% of training), greedy pass {greedy:.2f}s "
        f"({100 * greedy / off:.1f}%, once per run), the rest ({on - off - score - greedy:+.2f}s) extra "
        f"checkpoints and noise"
    )


if __name__ == "__main__":
    main()
