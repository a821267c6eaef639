"""`autombw webui simulate` and `autombw webui install-extension`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from autombw_cli.blocks import Arch
from autombw_cli.cli._app import app
from autombw_cli.errors import ConfigError

webui_app = typer.Typer(
    help="The WebUI side: install the bridge extension, or run a simulated WebUI.",
    no_args_is_help=True,
)
app.add_typer(webui_app, name="webui")


@webui_app.command("simulate")
def simulate_command(
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="Port to listen on (0: any free one). Default: 7860."),
    ] = 7860,
    host: Annotated[
        str, typer.Option(help="Address to listen on. Default: 127.0.0.1 (this machine only).")
    ] = "127.0.0.1",
    arch: Annotated[
        Arch, typer.Option(help="Architecture of the built-in models. Default: sd1.")
    ] = Arch.SD1,
    latency_per_image: Annotated[
        float,
        typer.Option(help="Seconds each image takes to 'generate'. Default: 0."),
    ] = 0.0,
    auth: Annotated[
        str | None,
        typer.Option(help="Require HTTP Basic auth USER:PASS on /sdapi, like --api-auth."),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="Inject a fault (repeatable): oom-every=N, drop-every=N, stall-every=N, "
            "stall-seconds=S, restart-every=N, refuse-auth.",
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint folder (the built-in simA/simB are written there if missing; "
            "your own small .safetensors files there are listed too). Default: a temp folder."
        ),
    ] = None,
    base_model: Annotated[
        bool,
        typer.Option(
            "--base-model",
            help="Also write the built-in simC, model C of add-difference merges. Default: off.",
        ),
    ] = False,
    lora: Annotated[
        bool,
        typer.Option(
            "--lora",
            help="Also write the built-in LoRA Lora/simLora.safetensors (formula lora). "
            "Default: off.",
        ),
    ] = False,
) -> None:
    """Run a simulated AUTOMATIC1111 WebUI (A1111 API + the autombw bridge) until Ctrl-C."""
    from autombw_cli.sim.faults import parse_faults
    from autombw_cli.sim.server import serve

    credentials = None
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user:
            raise ConfigError(f"--auth {auth!r}: expected USER:PASS")
        credentials = (user, password)
    if not math.isfinite(latency_per_image) or not 0 <= latency_per_image <= 3600:
        raise ConfigError(
            f"--latency-per-image {latency_per_image}: expected seconds from 0 to 3600"
        )
    if models_dir is not None and models_dir.exists() and not models_dir.is_dir():
        raise ConfigError(
            f"--models-dir {models_dir}: not a folder",
            hint="pass a folder for the simulated checkpoints (it is created if missing)",
        )
    plan = parse_faults(fault or [])
    typer.echo(
        f"simulated WebUI ({arch.value}) on http://{host}:{port}  "
        f"(models: {models_dir or 'temp folder'}; Ctrl-C stops)",
        err=True,
    )
    serve(
        port,
        host=host,
        arch=arch,
        latency_per_image=latency_per_image,
        auth=credentials,
        faults=plan,
        model_dir=models_dir,
        base_model=base_model,
        lora=lora,
    )


@webui_app.command("install-extension")
def install_extension_command(
    webui_dir: Annotated[
        Path, typer.Argument(help="The WebUI's folder (the one with webui.py / launch.py).")
    ],
    print_path: Annotated[
        bool,
        typer.Option("--print-path", help="Only print where the extension goes; write nothing."),
    ] = False,
) -> None:
    """Write (or upgrade) the autombw bridge extension into WEBUI_DIR/extensions/."""
    from autombw_cli.webui.bridge.extension import extension_path, install_extension

    if print_path:
        typer.echo(str(extension_path(webui_dir)))
        return
    path = install_extension(webui_dir)
    typer.echo(str(path))
    typer.echo(
        "restart the WebUI (with --api) to load it; check with "
        "`curl http://127.0.0.1:7860/autombw/v1/status`",
        err=True,
    )
