"""The `autombw` command line: the root app, global options and error → exit-code mapping.

Each command group lives in its own module here (one file would pass the ~400-line mark); a
command parses options, calls one function of the package that owns the work, and renders.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Annotated, NoReturn

import typer

from autombw_cli import __version__, exit_codes
from autombw_cli.cli._app import app, state
from autombw_cli.errors import AutombwError

# Command modules register themselves on import.
from autombw_cli.cli import blocks_cmd as _blocks_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import webui_cmd as _webui_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import config_cmd as _config_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import payload_cmd as _payload_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import merge_cmd as _merge_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import recover_cmd as _recover_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import weights_cmd as _weights_cmd  # noqa: F401  isort: skip
from autombw_cli.cli import search_cmd as _search_cmd  # noqa: F401  isort: skip


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autombw {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logging. Default: off.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Find the best block-by-block merge of two Stable Diffusion checkpoints.

    autombw drives AUTOMATIC1111 WebUI instances over HTTP, scores their images locally and
    lets an optimizer choose the next block weights. Start with `autombw search CONFIG`.
    """
    state.debug = debug
    level = logging.DEBUG if debug else logging.WARNING
    if sys.stderr.isatty():  # a terminal: rich's handler (levels in colour, long lines wrapped)
        from rich.console import Console
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(stderr=True),
            show_time=False,
            show_path=False,
            markup=False,
            highlighter=NullHighlighter(),
        )
        logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler])
    else:  # a pipe or a log file: plain lines
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, print user errors without a traceback."""
    try:
        code = app(args=argv, standalone_mode=False)
        # without standalone mode click returns (not raises) a command's `typer.Exit(code)`
        if isinstance(code, int) and code:
            sys.exit(code)
    except AutombwError as exc:
        if state.debug:  # the traceback too, but the same exit code (scripts branch on it)
            traceback.print_exc()
        _print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(exit_codes.INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(exit_codes.INTERRUPTED)
    except _click_exceptions() as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        _stdout_closed()
    except SystemExit as exc:  # rich ends a closed stdout with SystemExit(1): make it quiet
        if isinstance(exc.__context__, BrokenPipeError):
            _stdout_closed()
        raise


def _stdout_closed() -> NoReturn:
    """The reader of our output went away (``autombw recover X | head -1``): end quietly, as
    Unix tools do, without a traceback or the interpreter's failed flush at exit."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(exit_codes.STDOUT_CLOSED)


def _click_exceptions() -> tuple[type[BaseException], ...]:
    import click

    classes: list[type[BaseException]] = [click.ClickException]
    try:  # typer >= 0.17 vendors click as typer._click: its usage errors are not click's
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        pass
    else:
        classes.append(TyperClickException)
    return tuple(classes)


def _print_error(exc: AutombwError) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {escape(exc.hint)}", soft_wrap=True)
