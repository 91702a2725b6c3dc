"""Target perplexity: batched `HFSampler.target_logprobs` vs one example at a time.

The one-at-a-time side is how the PreMemAcc paper's released code scores targets: one forward
pass per example over prompt + target, full-vocabulary log-softmax at every position, then the
target positions are read off (we read every target token on both sides, so the two results
must agree; the script checks that they do). Same model, same synthetic examples, same process.

    python bench/bench_perplexity.py                       # SmolLM2-135M on CPU
    python bench/bench_perplexity.py --model tiny-random   # seconds
"""

from __future__ import annotations

import argparse
import time


def one_at_a_time(model, tok, prompts, targets):
    import torch

    from curator.data.format import encode_pair

    out = []
    with torch.inference_mode():
        for p, t in zip(prompts, targets):
            pi, ti = encode_pair(tok, p, t)
            logits = model(torch.tensor([pi + ti], device=model.device)).logits[0].float()
            lsm = torch.log_softmax(logits, dim=-1)
            pos = torch.arange(len(pi) - 1, len(pi) + len(ti) - 1, device=lsm.device)
            out.append(lsm[pos, torch.tensor(ti, device=lsm.device)].cpu().numpy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from curator.data.format import PromptFormat, encode_pair
    from curator.data.synthetic import SyntheticTask
    from curator.models import load_model
    from curator.sampling import HFSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    prompts, targets = PromptFormat().pairs(SyntheticTask().generate(args.examples, seed=args.seed))
    n_tok = sum(len(encode_pair(loaded.tokenizer, p, t)[1]) for p, t in zip(prompts, targets))
    print(
        f"model={args.model} device={loaded.device} dtype={loaded.dtype} threads={torch.get_num_threads()} "
        f"examples={len(prompts)} target_tokens={n_tok} batch_size={args.batch_size}"
    )
    sampler = HFSampler(loaded.model, loaded.tokenizer, batch_size=args.batch_size)
    sampler.target_logprobs(prompts[:2], targets[:2])  # warm-up
    one_at_a_time(loaded.model, loaded.tokenizer, prompts[:2], targets[:2])

    t0 = time.perf_counter()
    ref = one_at_a_time(loaded.model, loaded.tokenizer, prompts, targets)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = sampler.target_logprobs(prompts, targets)
    t_batch = time.perf_counter() - t0

    diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref) if len(a))
    assert all(len(a) == len(b) for a, b in zip(got, ref))
    print(f"one at a time: {t_one:7.2f} s ({n_tok / t_one:8.0f} target tokens/s)")
    print(f"      batched: {t_batch:7.2f} s ({n_tok / t_batch:8.0f} target tokens/s)")
    print(f"speed-up: {t_one / t_batch:.2f}x; max |log-prob difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
