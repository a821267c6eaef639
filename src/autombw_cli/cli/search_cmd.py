"""`autombw search CONFIG` (run or resume a search) and `autombw doctor CONFIG`."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from autombw_cli import exit_codes
from autombw_cli.cli._app import app, print_warning
from autombw_cli.errors import ConfigError

if TYPE_CHECKING:
    from autombw_cli.app.chain import ChainRun
    from autombw_cli.app.run import Run

# The application layer (config, WebUI client, scorer registry, the search) is imported inside
# the commands: every command module loads when `autombw` starts, and `autombw --help` should
# not pay for pydantic models, httpx and numpy.


@app.command("search")
def search_command(
    config: Annotated[
        Path | None,
        typer.Argument(help="The search config (YAML). Not needed with --resume."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", help="Continue the run in this folder (runs/<name>-<time>). Default: off."
        ),
    ] = None,
    plain: Annotated[
        bool,
        typer.Option("--plain", help="One line per evaluation instead of the live display."),
    ] = False,
    json_log: Annotated[
        Path | None,
        typer.Option("--json-log", help="Also write every event as a JSON line to FILE."),
    ] = None,
    max_evaluations: Annotated[
        int | None,
        typer.Option(
            "--max-evaluations",
            min=1,
            help="Cap the evaluations of a new run (default: the config's); with --resume, "
            "the run's new total: it may extend a finished run.",
        ),
    ] = None,
    warm_start: Annotated[
        Path | None,
        typer.Option(
            "--warm-start",
            help="Seed the optimizer with a history CSV (ours or auto-MBW-rt's). Default: none.",
        ),
    ] = None,
) -> None:
    """Search the best block weights: merge, render, score, repeat; resumable.

    Exit codes: 0 done, 2 config error, 3 every WebUI instance down, 130 interrupted; a search
    that finishes but cannot write its final merge exits with its cause's code (3 no WebUI could
    save it, 4 the offline merge cannot merge the files, 7 every free name is taken).
    """
    from autombw_cli.app.chain import ChainRun, is_chain_folder
    from autombw_cli.app.run import Run
    from autombw_cli.config import load_config

    if (config is None) == (resume is None):
        raise ConfigError(
            "give either a CONFIG file or --resume RUN_DIR",
            hint="e.g. `autombw search configs/quickstart.yaml`",
        )
    run: Run | ChainRun
    if resume is not None:
        if warm_start is not None:
            raise ConfigError("--warm-start only applies to a new run, not to --resume")
        if is_chain_folder(resume):
            _chain_options(max_evaluations, None)
            run = ChainRun.resume(resume)
        else:
            run = Run.resume(resume, max_evaluations=max_evaluations)
    else:
        assert config is not None
        cfg = load_config(config)
        err = Console(stderr=True)
        for warning in cfg.warnings():  # what `config check` says, before a week of searching
            print_warning(err, warning)
        if cfg.chain is not None:
            _chain_options(max_evaluations, warm_start)
            run = ChainRun.create(cfg)
        else:
            run = Run.create(cfg, max_evaluations=max_evaluations, warm_start=warm_start)
    code = _execute(run, plain=plain, json_log=json_log)
    raise typer.Exit(code)


def _chain_options(max_evaluations: int | None, warm_start: Path | None) -> None:
    """A chain's budgets are its steps' (``chain[k].search.max_evaluations``)."""
    if max_evaluations is not None or warm_start is not None:
        raise ConfigError(
            "--max-evaluations and --warm-start do not apply to a chained merge",
            hint="set each step's budget in the config (chain: - search: {max_evaluations: N})",
        )


def _execute(run: Run | ChainRun, *, plain: bool, json_log: Path | None) -> int:
    from autombw_cli.report.progress import JsonLog, LiveDisplay, PlainPrinter
    from autombw_cli.search.events import StopReason, fan_out

    err = Console(stderr=True)
    live = not plain and sys.stdout.isatty() and err.is_terminal
    sinks: list = []
    display = LiveDisplay(err) if live else None
    sinks.append(display if display is not None else PlainPrinter(sys.stdout))
    jlog = JsonLog(json_log) if json_log is not None else None
    if jlog is not None:
        sinks.append(jlog)
    try:
        result = asyncio.run(run.execute(fan_out(sinks)))
    except asyncio.CancelledError:
        err.print(
            f"[bold red]aborted.[/] The journal is intact; continue with "
            f"`autombw search --resume {run.run_dir}`",
            soft_wrap=True,
        )
        return exit_codes.INTERRUPTED
    finally:
        if display is not None:
            display.close()
        if jlog is not None:
            jlog.close()
    best = "none" if result.best is None else f"{result.best.score:.4f} (#{result.best.number})"
    print(f"{result.reason.value}: {result.done} evaluations, best {best}; {result.run_dir}")
    if result.validation is not None:
        print(result.validation.describe())
    if "recipe" in result.outputs:
        print(f"best recipe: {result.outputs['recipe']}")
    if result.reason in (StopReason.INTERRUPTED, StopReason.ALL_DOWN, StopReason.FAILED):
        err.print(  # one line, whatever the width: it is meant to be copied
            f"continue with `autombw search --resume {result.run_dir}`",
            highlight=False,
            soft_wrap=True,
        )
    return result.exit_code


@app.command("doctor")
def doctor_command(
    config: Annotated[Path, typer.Argument(help="The search config (YAML).")],
) -> None:
    """Check every WebUI instance of a config (and the scorer) without searching."""
    from autombw_cli.app.instances import doctor
    from autombw_cli.app.prompts import expand_prompts
    from autombw_cli.config import load_config

    cfg = load_config(config)
    report = asyncio.run(doctor(cfg, expand_prompts(cfg)))
    table = Table(title="WebUI instances")
    for col in ("instance", "URL", "WebUI", "bridge", "GPU memory", "models", "state"):
        table.add_column(col)
    for r in report.instances:
        style = "green" if r.ok else "red"
        table.add_row(
            r.label,
            r.url,
            r.webui_version or "-",
            r.bridge_version or "-",
            r.gpu_memory or "-",
            r.models_found,
            f"[{style}]{r.state}[/]",
        )
    out = Console()
    out.print(table)
    if not report.scorer_problem:  # a problem is listed with the others below
        out.print(f"scorer {report.scorer_name}: [green]loads[/]")
    for p in report.problems():
        out.print(f"[red]-[/] {p}")
    raise typer.Exit(exit_codes.OK if report.ok else exit_codes.WEBUI)
