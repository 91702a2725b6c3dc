"""The few collectives curator needs under ``accelerate launch``, with errors people can read.

Every rank trains; measurement is sharded across ranks and gathered, so every rank ends a round
with the same ledger; only the main process writes files and MLflow (DESIGN §7). When one rank
dies, the others would otherwise fail deep inside torch.distributed (or wait for the process
group's timeout): `collective_errors` turns that into one line saying what happened.

Single-process runs never import torch.distributed: every function here is a no-op there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from curator.errors import ConfigError, CuratorError, RankFailure

# seconds a collective waits for the other ranks before failing (torch's default is 30 min)
TIMEOUT_ENV = "CURATOR_COLLECTIVE_TIMEOUT"


def collective_timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def init_launch() -> None:
    """Start the launch's process group now (under ``accelerate launch`` with several processes),
    so that checks across ranks can run before any model loads. A no-op in one process."""
    if _dist() is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        make_accelerator()


def make_accelerator():
    """An `accelerate.Accelerator` that also works for multi-process runs on CPU-only machines.

    accelerate picks its gloo (MULTI_CPU) backend only when told to use the CPU; a torchrun-style
    launch (``accelerate launch --multi_gpu``, ``torchrun``) on a machine without a GPU would
    otherwise run every process as an independent single-process job. Collectives time out after
    ``CURATOR_COLLECTIVE_TIMEOUT`` seconds (default 1800), so a dead rank stops the others.
    """
    from datetime import timedelta

    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        # accelerate would silently run an FSDP launch without GPUs as unsharded CPU processes
        raise ConfigError(
            "an FSDP launch (--use_fsdp) needs GPUs; on CPUs launch with --multi_gpu or --cpu "
            "(each process then holds the whole model)"
        )
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_seconds()))
    return Accelerator(cpu=multi and not torch.cuda.is_available() and not has_xpu, kwargs_handlers=[timeout])


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d is not None else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d is not None else 0


def is_main_process() -> bool:
    """Rank 0 of an initialised launch; before the process group exists, RANK from the launcher."""
    d = _dist()
    if d is not None:
        return d.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def collective_errors(what: str) -> Iterator[None]:
    """Turn a failed collective (a peer that died, a timeout) into one `RankFailure` line."""
    try:
        yield
    except CuratorError:
        raise
    except Exception as e:  # torch raises RuntimeError / DistBackendError / DistNetworkError
        if _dist() is None or not _looks_distributed(e):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RankFailure(
            f"rank {rank()} of {world_size()}: {what} failed because another process of "
            f"this launch stopped or did not answer within {collective_timeout_seconds():.0f}s "
            f"({first}); see the other ranks' output for the cause, then rerun the same "
            "command to resume from the last finished round"
        ) from e


def _looks_distributed(e: BaseException) -> bool:
    name = type(e).__name__
    text = str(e).lower()
    return (
        name in ("DistBackendError", "DistNetworkError", "DistStoreError")
        or "gloo" in text
        or "nccl" in text
        or "timed out" in text
        or "connection" in text
        or "peer" in text
    )


def gather_objects(obj: Any, what: str = "gathering results") -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * d.get_world_size()
    with collective_errors(what):
        d.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, what: str = "sharing a result of the main process") -> Any:
    """Rank 0's ``obj`` on every rank."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return obj
    box = [obj]
    with collective_errors(what):
        d.broadcast_object_list(box, src=0)
    return box[0]


def barrier(what: str = "waiting for the other processes") -> None:
    d = _dist()
    if d is not None and d.get_world_size() > 1:
        with collective_errors(what):
            d.barrier()


def shutdown() -> None:
    """End a launch's process group while the interpreter is whole (a no-op in one process).

    Call it after everything that holds the group (DDP/FSDP models, optimizers, trainers) is
    released. Left to interpreter finalization, gloo's worker threads can still hold work whose
    tensors Python owns, and the process aborts at exit ("terminate called without an active
    exception", exit -6; pytorch/pytorch#179291), a failure that load makes likely.
    """
    d = _dist()
    if d is None:
        return
    import gc

    gc.collect()
    if d.get_world_size() > 1:
        with collective_errors("waiting for the other processes before ending the launch"):
            d.barrier()
    d.destroy_process_group()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same_on_every_rank(obj: Any, what: str) -> None:
    """Raise ConfigError on every rank when ranks disagree on ``obj`` (e.g. the resolved recipe)."""
    prints = gather_objects(fingerprint(obj), f"comparing the {what} across ranks")
    if len(set(prints)) > 1:
        odd = [r for r, fp in enumerate(prints) if fp != prints[0]]
        raise ConfigError(
            f"the processes of this launch disagree on the {what} (ranks {odd} differ from "
            "rank 0); launch every rank with the same command, recipe file and --set values"
        )


def launch_cmd(n: int, target: list[str]) -> list[str]:
    """The command line that runs ``target`` (``[script.py, ...]`` or ``["-m", module, ...]``) in
    ``n`` processes under ``accelerate launch`` on this machine (the tests' gloo runs, the GPU
    bench); ``n == 1`` runs it in this interpreter without a launcher."""
    if n == 1:
        return [sys.executable, *target]
    with socket.socket() as s:  # a free port for the rendezvous, so parallel launches never collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [
        launcher,
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *target,
    ]
