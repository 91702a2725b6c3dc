"""`curate` — the command line. A thin layer: each command calls one public function.

Subcommands live in their own modules and are imported only when invoked, so `curate --help`
stays fast (no torch, transformers or mlflow import).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from curator import __version__

# name -> ("module:attr", one-line help shown by `curate --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("curator.cli.run:run", "Run the active curation loop from a recipe (no recipe: the CPU demo)."),
    "validate": ("curator.cli.run:validate", "Validate a recipe without loading any model."),
    "compare": ("curator.cli.compare:compare", "Data-efficiency curves and ratio table from MLflow or a run dir."),
    "strategies": ("curator.cli.strategies:strategies", "List selection strategies, their signals and parameters."),
    "premem": ("curator.cli.premem:premem", "Finetune with dynamics tracking; write the ledger and PreMemAcc summary."),
    "predict": ("curator.cli.analysis:predict", "Predict test accuracy from training dynamics across runs."),
    "robustness": ("curator.cli.analysis:robustness", "Accuracy under forced response prefixes, per PreMemAcc bucket."),
    "sweep": (
        "curator.cli.analysis:sweep",
        "Train a learning-rate x epochs grid with dynamics tracking, then predict.",
    ),
    "ledger": ("curator.cli.ledger:ledger", "Inspect, summarise and import learning-dynamics ledgers."),
    "measure": (
        "curator.cli.measure:measure",
        "A learning-dynamics ledger from checkpoints any trainer saved (full or peft).",
    ),
    "export": (
        "curator.cli.export:export",
        "A run's selected training set as a datasets dataset (jsonl, parquet, save_to_disk, hub).",
    ),
    "data": ("curator.cli.data:data", "Preview datasets and write synthetic reasoning tasks."),
    "probes": (
        "curator.cli.probes:probes",
        "Response-family probes through SFT / extended SFT / DPO (squeezing effect).",
    ),
    "routing": (
        "curator.cli.routing:routing",
        "Validate MoE routing monitors (pathway distance/consistency) on a small MoE.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod_name, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(mod_name), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("-v", "--verbose", is_flag=True, help="Show library warnings and logs (transformers, torch, mlflow...).")
@click.version_option(__version__, package_name="premem-curator", prog_name="curate")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """curator: active data curation for LLM reasoning finetuning, driven by learning dynamics."""
    from curator.console import set_verbose  # lazy: pulls in tqdm

    set_verbose(verbose)
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["CURATOR_DEBUG"] = "1"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("CURATOR_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="curate", standalone_mode=False)
        _end_launch()
    except click.exceptions.Abort as e:
        # click turns Ctrl-C into Abort; say how to pick the work up again
        if isinstance(e.__context__ or e.__cause__, KeyboardInterrupt):
            _interrupted(args)
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted(args)
    except SystemExit as e:
        if _reader_closed_output(e):
            sys.exit(e.code)  # `curate ... | head`: the reader stopped reading; nothing went wrong here
        # no curator command exits from inside itself (main alone does, below): a SystemExit that
        # reaches here came from a plugin or library calling sys.exit, which would end the command
        # with that code and no word of why
        if debug:
            raise
        click.echo(f"error: {_exit_origin(e)}", err=True)
        sys.exit(2)
    except Exception as e:
        # one place for every command and plugin: user errors become one line and exit code 2
        from curator.errors import user_error_line  # lazy: `curate --help` imports click alone

        line = user_error_line(e)
        if line is None or debug:
            raise
        click.echo(f"error: {line}", err=True)
        sys.exit(2)


def _end_launch() -> None:
    """End the process group a command started under ``accelerate launch`` (`curate run`, `premem`,
    `measure`, `sweep` with several processes) once the command has returned and released its
    models, so gloo is not torn down by interpreter finalization (the exit -6 abort
    `curator.distributed.shutdown` describes). Commands that never touched torch.distributed skip
    it without importing torch."""
    if "torch.distributed" not in sys.modules:
        return
    from curator import distributed  # lazy: pulls in torch

    distributed.shutdown()


def _reader_closed_output(e: SystemExit) -> bool:
    """Whether the exit is click's own after stdout's reader went away (EPIPE, as in ``| head``):
    click swaps in its flush-pacifying wrapper and calls sys.exit from its core."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    click_dir = os.path.dirname(click.__file__)
    from_click = bool(frames) and frames[-1].filename.startswith(click_dir)
    return from_click and type(sys.stdout).__name__ == "_PacifyFlushWrapper"


def _exit_origin(e: SystemExit) -> str:
    """One line saying who called sys.exit (the innermost frame that is not Python's own)."""
    import traceback

    frames = [
        f
        for f in traceback.extract_tb(e.__traceback__)
        if "sys.exit" in (f.line or "") or "SystemExit" in (f.line or "")
    ]
    where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].name})" if frames else "code curator called"
    return (
        f"{where} called sys.exit({e.code!r}) in the middle of the command; plugin code (a strategy, "
        "grader or loop) must raise an exception instead of exiting the process (rerun with --debug "
        "for the traceback)"
    )


def _interrupted(args: list[str]) -> None:
    import shlex

    again = shlex.join(["curate", *args])
    if args and args[0] == "run":
        click.echo(f"interrupted; finished rounds are kept: rerun `{again}` to resume", err=True)
    else:
        click.echo(f"interrupted; rerun `{again}` to start again", err=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
