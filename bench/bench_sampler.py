"""Sampler throughput: curator's `hf` sampler vs a plain one-prompt-at-a-time `model.generate` loop.

Both sides use the same model, the same prompts (synthetic GSM8K-style problems in the default
PreMemAcc prompt format), the same sampling settings (T, top_p, stop string, max new tokens) and
run in the same process, one after the other. Tokens are counted the same way on both sides: every
sampled token of every completion up to and including the one that ends it (EOS or the token
completing a stop string); padding after a finished sequence is not counted.

    python bench/bench_sampler.py                        # SmolLM2-135M on CPU
    python bench/bench_sampler.py --model tiny-random    # seconds, for a smoke run
    python bench/bench_sampler.py --gpu                  # CUDA: tokens/s vs the HBM-bandwidth bound
                                                         # for SmolLM2 and a ~1B random Llama
"""

from __future__ import annotations

import argparse
import time


def build_prompts(n: int, seed: int = 0) -> list[str]:
    from curator.data.format import PromptFormat
    from curator.data.synthetic import SyntheticTask

    examples = SyntheticTask().generate(n, seed=seed)
    return PromptFormat().pairs(examples)[0]


def naive_loop(model, tok, prompts, n, params) -> tuple[int, float]:
    """What a first implementation does: one `generate` call per prompt, n return sequences."""
    import torch

    from curator.data.format import encode_prompt

    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    kw = (
        dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.temperature > 0
        else dict(do_sample=False)
    )
    tokens = 0
    t0 = time.perf_counter()
    torch.manual_seed(params.seed)
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([encode_prompt(tok, p)], device=model.device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=params.max_new_tokens,
                num_return_sequences=n,
                stop_strings=list(params.stop) or None,
                tokenizer=tok,
                pad_token_id=pad,
                **kw,
            )
            gen = out[:, ids.shape[1] :].tolist()
            for seq in gen:
                # tokens up to and including the first EOS/PAD (HF pads finished rows with it)
                k = next((i for i, t in enumerate(seq) if t in (eos, pad)), None)
                tokens += len(seq) if k is None else k + 1
    return tokens, time.perf_counter() - t0


def curator_sampler(model, tok, prompts, n, params, batch_size) -> tuple[int, float]:
    from curator.sampling import HFSampler

    s = HFSampler(model, tok, batch_size=batch_size)
    t0 = time.perf_counter()
    s.generate(prompts, n, params)
    return s.tokens_generated, time.perf_counter() - t0


def cpu_compare(args) -> None:
    import torch

    from curator.models import load_model
    from curator.sampling import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    prompts = build_prompts(args.prompts, args.seed)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    print(
        f"model={args.model} device={loaded.device} dtype={loaded.dtype} threads={torch.get_num_threads()} "
        f"prompts={len(prompts)} n={args.n} max_new_tokens={args.max_new_tokens} T={args.temperature} "
        f"top_p={args.top_p} stop={params.stop!r} batch_size={args.batch_size}"
    )
    # warm-up (first-call allocations, lazy imports) on a few prompts, not timed
    curator_sampler(loaded.model, loaded.tokenizer, prompts[:2], 2, params, args.batch_size)
    naive_loop(loaded.model, loaded.tokenizer, prompts[:1], 2, params)
    results = {}
    for name in args.order.split(","):
        if name == "naive":
            results[name] = naive_loop(loaded.model, loaded.tokenizer, prompts, args.n, params)
        else:
            results[name] = curator_sampler(loaded.model, loaded.tokenizer, prompts, args.n, params, args.batch_size)
        tok, sec = results[name]
        print(f"{name:>8}: {tok:6d} tokens in {sec:7.2f} s = {tok / sec:8.1f} tokens/s")
    (tn, sn), (tc, sc) = results["naive"], results["hf"]
    print(f"speed-up (tokens/s, hf / naive): {(tc / sc) / (tn / sn):.2f}x")


def random_llama_1b():
    """A Llama-3.2-1B-shaped random model (1.24 B parameters), built directly on the GPU in bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.eval()


NOMINAL_HBM = {
    "H200": 4.8e12,
    "H100 SXM": 3.35e12,
    "H100 80GB HBM3": 3.35e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100-PCIE-80GB": 1.94e12,
    "A100": 1.56e12,
}


def measured_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) over a 2 GiB buffer."""
    import torch

    x = torch.empty(2**31, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * reps / (time.perf_counter() - t0)


def describe_device() -> tuple[str, float | None, float]:
    """The GPU's name, its nominal HBM bandwidth (None when not in `NOMINAL_HBM`) and its measured
    copy bandwidth, printed as one line."""
    import torch

    name = torch.cuda.get_device_name()
    nominal = next((v for k, v in NOMINAL_HBM.items() if k in name), None)
    bw = measured_bandwidth()
    print(
        f"device: {name}; copy bandwidth {bw / 1e12:.2f} TB/s"
        + (f", nominal HBM {nominal / 1e12:.2f} TB/s" if nominal else "")
    )
    return name, nominal, bw


def decode_bytes(model, rows: int, mean_context: float) -> tuple[int, float]:
    """Bytes one decode step must read: every weight once (the input embedding only for the rows'
    tokens) and, per row, its KV cache."""
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    w = sum(p.numel() * p.element_size() for p in model.parameters())
    if not tied:
        w -= emb.numel() * emb.element_size()
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * emb.element_size()
    return w, rows * mean_context * kv_per_token


def gpu_report(args) -> None:
    import torch

    from curator.models import load_model
    from curator.sampling import HFSampler, SamplingParams

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; none is available here")
    name, nominal, bw = describe_device()
    smol = load_model("smollm2-135m-instruct", device="cuda", dtype="bfloat16")
    prompts = build_prompts(args.prompts, args.seed)
    for label, model in (("smollm2-135m", smol.model), ("llama-1b-random", None)):
        if model is None:
            del smol.model
            torch.cuda.empty_cache()
            model = random_llama_1b()
        # random weights never emit the stop string: every sequence decodes max_new_tokens, which
        # makes the row count constant and the bound exact
        for stop in ((), SamplingParams().stop):
            params = SamplingParams(
                temperature=args.temperature,
                top_p=args.top_p,
                max_new_tokens=args.max_new_tokens,
                seed=args.seed,
                stop=stop,
            )
            s = HFSampler(model, smol.tokenizer, batch_size=args.batch_size)
            s.generate(prompts[:4], 2, params)  # warm-up
            s.tokens_generated = 0
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            s.generate(prompts, args.n, params)
            torch.cuda.synchronize()
            sec = time.perf_counter() - t0
            rows = min(args.batch_size, len(prompts) * args.n)
            mean_prompt = sum(len(smol.tokenizer(p)["input_ids"]) for p in prompts) / len(prompts)
            w, kv = decode_bytes(model, rows, mean_prompt + args.max_new_tokens / 2)
            bound = rows * (bw if nominal is None else nominal) / (w + kv)
            print(
                f"{label:>16} stop={bool(stop)!s:5}: {s.tokens_generated / sec:9.0f} tokens/s "
                f"(batch {rows} rows); bandwidth bound {bound:9.0f} tokens/s "
                f"[weights {w / 1e9:.2f} GB + KV {kv / 1e9:.2f} GB per step] "
                f"-> {100 * s.tokens_generated / sec / bound:.0f}% of bound"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="load_model spec (e.g. tiny-random)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=5, help="samples per prompt (paper: k=5)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=80, help="hf sampler: sequences decoded together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--order", default="naive,hf", help="which side runs first")
    ap.add_argument("--gpu", action="store_true", help="CUDA report: tokens/s vs the memory-bandwidth bound")
    args = ap.parse_args()
    if args.gpu:
        args.batch_size = max(args.batch_size, 256) if args.batch_size == 80 else args.batch_size
        args.prompts = max(args.prompts, 64) if args.prompts == 16 else args.prompts
        args.max_new_tokens = 256 if args.max_new_tokens == 64 else args.max_new_tokens
        gpu_report(args)
    else:
        cpu_compare(args)


if __name__ == "__main__":
    main()
