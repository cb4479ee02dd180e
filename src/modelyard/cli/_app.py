"""The root Typer app: every command group attached, and the entry point's error exits."""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup
from typer.main import get_command

from modelyard import __version__
from modelyard.cli import (
    _admin,
    _audit,
    _base,
    _batch,
    _budgets,
    _data,
    _delivery,
    _doctor,
    _finetune,
    _from_records,
    _info,
    _judges,
    _monitor,
    _pipeline,
    _quickstart,
    _registry,
    _route,
    _serve,
    _stream,
    _tokens,
)
from modelyard.cli._common import err_console, set_actor
from modelyard.cli._home import set_current_command
from modelyard.errors import ModelyardError, status_of


class _RootGroup(TyperGroup):
    """The root group: records the full command path (``registry list``) as it resolves it."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        path = [name] if name else []
        node, remaining = command, list(rest)
        while (subcommand := getattr(node, "get_command", None)) is not None:
            words = [a for a in remaining if not a.startswith("-")]  # groups take no values
            child = subcommand(ctx, words[0]) if words else None
            if child is None:
                break
            path.append(words[0])
            node, remaining = child, remaining[remaining.index(words[0]) + 1 :]
        set_current_command(" ".join(path) or None)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (`modelyard audit log | head`): stop quietly, as a
            # command killed by SIGPIPE does, with no traceback and no flush error at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(EXIT_BROKEN_PIPE) from None


app = typer.Typer(
    name="modelyard",
    cls=_RootGroup,
    help="Fine-tune, govern, serve and watch LLMs on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help wraps to the terminal and never cuts an option name (Rich's panels do
    # at 80 columns).
    rich_markup_mode=None,
)

_debug = {"on": False}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head`


def _print_version(value: bool) -> None:
    if value:
        print(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
    actor: str | None = typer.Option(
        None, "--actor", help="Act as NAME (default: MODELYARD_ACTOR, else the OS user)."
    ),
) -> None:
    _debug["on"] = debug
    set_actor(actor)


app.command("init", help="Create the home, the artifact store and the store schema (idempotent).")(
    _admin.init
)
app.command("info", help="Say which home and store are in use here, and how they were found.")(
    _info.info
)
app.command("quickstart", help="Run the whole flow on tiny local models for two tenants.")(
    _quickstart.quickstart
)
app.command("serve", help="Serve the OpenAI-compatible API for every endpoint in the store.")(
    _serve.serve
)
app.command("finetune", help="Train, evaluate, gate and register a version from a YAML config.")(
    _finetune.finetune
)
app.command("evaluate", help="Evaluate a registered version on a data file, with optional gates.")(
    _finetune.evaluate
)
app.command("doctor", help="Find and repair what crashes left (stuck runs, orphans, temp files).")(
    _doctor.doctor
)
app.add_typer(_base.app, name="base")
app.add_typer(_data.app, name="data")
_data.app.command("from-records")(_from_records.from_records)
app.add_typer(_admin.tenants_app, name="tenants")
app.add_typer(_admin.keys_app, name="keys")
app.add_typer(_budgets.app, name="budgets")
for _name, _command in (
    ("lineage", _registry.lineage),
    ("card", _registry.card),
    ("export", _registry.export),
    ("import", _registry.import_),
    ("upstream", _registry.upstream),
    ("archive", _registry.archive),
    ("unalias", _registry.unalias),
    ("tag", _registry.tag),
):
    _admin.registry_app.command(_name)(_command)
app.add_typer(_admin.registry_app, name="registry")
app.add_typer(_admin.endpoints_app, name="endpoints")
app.add_typer(_delivery.rollout_app, name="rollout")
app.add_typer(_delivery.servers_app, name="servers")
app.command(
    "route", help="Relay the OpenAI API to the replicas, each request where its adapter is."
)(_route.route)
app.command("controller", help="Run the rollout controller alone (one leader per store).")(
    _delivery.controller
)
app.add_typer(_audit.app, name="audit")
app.add_typer(_audit.actors_app, name="actors")
app.add_typer(_tokens.app, name="tokens")
app.add_typer(_monitor.app, name="monitor")
app.add_typer(_judges.app, name="judges")
app.add_typer(_batch.app, name="batch")
app.add_typer(_stream.app, name="stream")
app.add_typer(_pipeline.app, name="pipeline")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning errors into one clear line and an exit code.

    Typer (standalone mode) handles usage errors itself (exit 2); what reaches
    us is a ModelyardError from a command.
    """
    # Library deprecation chatter is for developers, not for people running commands.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # On CPUs with AVX512-BF16, importing bitsandbytes (peft does, when it is installed)
    # logs that Hugging Face's optional `kernels` package is missing, before any command's
    # own output; its slower fallback is what runs, and the line speaks to nobody here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    command = get_command(app)
    try:
        try:
            command.main(args=argv, prog_name="modelyard", standalone_mode=True)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as noise at interpreter exit
            # ended: code that runs next in this process (a test, a notebook, the next
            # main()) is in no command, and must not be judged as the one that ran here
            set_current_command(None)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ModelyardError as exc:
        if _debug["on"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", markup=True)
        return status_of(exc).exit_code
    except KeyboardInterrupt:
        err_console.print("aborted")
        return 130
    return 0


def run() -> None:
    """The ``modelyard`` entry point. Once the command is done, every object is moved out of
    the collector's sight (``gc.freeze``) before the interpreter exits: its last collections
    would otherwise walk the 600,000 or so objects torch, transformers and peft make, about
    2.5 s of CPU after the command has answered (benchmarks/cli_exit.py), which a person, a
    script or a rolling restart waits for. Only objects held in reference cycles are left
    unfinalized: atexit handlers and ``weakref.finalize`` (temporary directories) still run,
    objects no cycle holds are still freed as modules are torn down, and commands close
    their stores, servers and files with ``with`` blocks, not at collection."""
    code = main()
    gc.freeze()
    sys.exit(code)
