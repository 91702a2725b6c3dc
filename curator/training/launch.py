"""Finetune from the command line, in one process or under ``accelerate launch``.

    python -m curator.training.launch --model tiny-random --data train.jsonl --output-dir out
    accelerate launch --num_processes 2 -m curator.training.launch --model ... --data ... --output-dir out

Every `TrainSettings` field is an option (``--learning-rate 1e-4``, ``--checkpoint-every 50``,
``--save-checkpoints``); ``--lora`` trains a LoRA adapter with `LoraSettings` defaults. The main
process writes ``train_result.json`` (per-step losses, checkpoint metrics) to the output dir;
``--rank-reports`` makes every process also write ``rank-N.json`` with a fingerprint of its
weights, to check that the processes stayed in sync.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import typing

from curator.data.format import PromptFormat
from curator.data.loaders import load_examples
from curator.distributed import make_accelerator, shutdown
from curator.errors import CuratorError
from curator.models import LoraSettings, apply_lora, load_model
from curator.training.settings import TrainSettings
from curator.training.sft import finetune


def _option_type(tp: typing.Any):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if tp in (int, float, str):
        return tp
    if args and all(a in (int, str) for a in args):
        return str  # 'epoch' or a step count; TrainSettings normalises digit strings
    return args[0] if len(args) == 1 else str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m curator.training.launch", description="SFT with checkpoints (loss on target tokens only)."
    )
    p.add_argument("--model", required=True, help="load_model spec: hub id, local dir, .gguf, or alias")
    p.add_argument(
        "--data",
        required=True,
        help="training examples: a .jsonl/.json/.parquet/.csv file, a hub id, or 'synthetic:<preset>?n=..'",
    )
    p.add_argument("--data-split", default="train", help="split of a hub dataset")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 or auto (default)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (LoraSettings defaults)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--save-final", action="store_true", help="save the final model to OUTPUT_DIR/final")
    p.add_argument(
        "--rank-reports",
        action="store_true",
        help="every process writes OUTPUT_DIR/rank-N.json (losses, metrics, weight fingerprint)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    hints = typing.get_type_hints(TrainSettings)
    for f in dataclasses.fields(TrainSettings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if hints[f.name] is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            p.add_argument(
                flag, type=_option_type(hints[f.name]), default=f.default, help=f"{help_text} (default: {f.default})"
            )
    return p


def weights_fingerprint(model) -> str:
    """sha256 over the bytes of every parameter, in name order (identical weights <=> same hash)."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def run(args: argparse.Namespace) -> dict:
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**kwargs)
    examples = load_examples(args.data, split=args.data_split)
    settings.checkpoint_schedule(len(examples))  # fail before the model loads
    acc = make_accelerator()
    loaded = load_model(args.model, dtype=args.dtype, device=str(acc.device))
    model = loaded.model
    if args.lora:
        model = apply_lora(model, LoraSettings())
    calls: list[int] = []
    result = finetune(
        model,
        loaded.tokenizer,
        examples,
        PromptFormat(chat=args.chat),
        settings,
        on_checkpoint=lambda m, info: calls.append(info.index),
        progress=not args.no_progress,
        accelerator=acc,
    )
    out = settings.output_dir
    if out:
        os.makedirs(out, exist_ok=True)
        if acc.is_main_process:
            with open(os.path.join(out, "train_result.json"), "w") as f:
                json.dump(result.to_dict(), f, indent=1)
            if args.save_final:
                model.save_pretrained(os.path.join(out, "final"))
                loaded.tokenizer.save_pretrained(os.path.join(out, "final"))
        if args.rank_reports:
            report = {
                "process_index": acc.process_index,
                "num_processes": acc.num_processes,
                "callbacks": calls,
                "step_losses": result.step_losses,
                "checkpoints": [dataclasses.asdict(c) for c in result.checkpoints],
                "final_metrics": result.final_metrics,
                "params_sha256": weights_fingerprint(model),
            }
            with open(os.path.join(out, f"rank-{acc.process_index}.json"), "w") as f:
                json.dump(report, f, indent=1)
        acc.wait_for_everyone()
    return result.to_dict()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except CuratorError as e:
        if os.environ.get("CURATOR_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    shutdown()  # run()'s trainer and model are released: end the process group before exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
