"""How the tests start a command under `accelerate launch` with N CPU processes (gloo)."""

from __future__ import annotations

import os
import socket
import sys


def launch_cmd(n: int, target: list[str]) -> list[str]:
    """The command line that runs ``target`` (``[script.py, ...]`` or ``["-m", module, ...]``) in
    ``n`` processes; ``n == 1`` runs it in this interpreter without a launcher."""
    if n == 1:
        return [sys.executable, *target]
    with socket.socket() as s:  # a free port for the rendezvous, so parallel tests never collide
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
