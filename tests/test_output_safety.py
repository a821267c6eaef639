"""Nothing overwrites a user's checkpoint without an explicit opt-in: ``models.output`` may not
name A or B and must be a name the bridge accepts (`autombw config check`); `autombw merge -o`
refuses an existing file without --overwrite and A or B always; the temp files of killed
writers are cleaned up by the next write into their folder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from autombw_cli.blocks import Arch
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from conftest import cli_exit_code


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- models.output in the config ----------------------------------------------------------
def write_config(folder: Path, models: str) -> Path:
    (folder / "p.json").write_text('{"prompt": "a cat", "steps": 4, "width": 64, "height": 64}')
    path = folder / "search.yaml"
    path.write_text(
        f"models: {models}\ninstances: {{simulate: 1}}\npayloads: {{files: [p.json]}}\n"
        "scorer: {name: sim, device: cpu}\n"
    )
    return path


@pytest.mark.parametrize(
    ("models", "role"),
    [
        ("{a: simA, b: simB, output: simA}", "A"),
        ("{a: simA.safetensors, b: simB, output: SIMA}", "A"),
        ("{a: 'sub/simA.safetensors [0123abcd]', b: simB, output: simA}", "A"),
        ("{a: simA, b: 'simB.ckpt', output: simB}", "B"),
        ("{a: 'Pretty Title', b: simB, output: mine, a_file: mine.safetensors}", "A"),
    ],
)
def test_config_check_refuses_an_output_naming_a_or_b(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], models: str, role: str
) -> None:
    write_checkpoint(tmp_path / "mine.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    assert cli_exit_code(["config", "check", str(write_config(tmp_path, models))]) == 2
    err = capsys.readouterr().err
    assert "models.output" in err and f"model {role}" in err, err


@pytest.mark.parametrize(
    "output",
    ["CON", "nul", "..hidden", ".hidden", "trailing ", " leading", "dot.", "a\u202egnp.exe",
     "x\u2067y", "with|pipe", "merged.safetensors"],
)  # fmt: skip
def test_config_check_refuses_names_the_bridge_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    quoted = output.replace("\\", "\\\\").replace('"', '\\"')
    cfg = write_config(tmp_path, f'{{a: simA, b: simB, output: "{quoted}"}}')
    assert cli_exit_code(["config", "check", str(cfg)]) == 2
    assert "models.output" in capsys.readouterr().err


def test_config_check_accepts_a_plain_new_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, "{a: simA, b: simB, output: 'my merge v2'}")
    assert cli_exit_code(["config", "check", str(cfg)]) == 0
    assert "overwrite: false" in capsys.readouterr().out  # outputs.overwrite, off by default


# --- autombw merge -o ----------------------------------------------------------------------
@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "models"
    d.mkdir()
    a = write_checkpoint(d / "A.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    b = write_checkpoint(d / "B.safetensors", random_state_dict(Arch.SD1, "tiny", 2))
    return a, b


def test_merge_overwrites_an_existing_output_only_with_overwrite(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = models
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the user's file")
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(out)]) == 7
    assert out.read_bytes() == b"the user's file"
    sidecar = tmp_path / "other.recipe.txt"
    sidecar.write_text("keep me\n")  # a recipe file alone is protected too
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(tmp_path / "other")]) == 7
    assert sidecar.read_text() == "keep me\n" and not (tmp_path / "other.safetensors").exists()
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(out), "--overwrite"]) == 0
    assert set(load_file(out)) == set(load_file(a))


@pytest.mark.parametrize("target", ["A.safetensors", "B.safetensors", "A.ckpt", "b"])
def test_merge_never_writes_over_a_or_b(
    models: tuple[Path, Path], target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = models
    (a.parent / "A.recipe.txt").write_text("A's recipe\n")
    before = {p.name: digest(p) for p in a.parent.iterdir()}
    out = a.parent / target
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(out), "--overwrite"]) == 2
    assert "model " in capsys.readouterr().err
    assert {p.name: digest(p) for p in a.parent.iterdir()} == before


def test_merge_refuses_a_hard_link_to_a(models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = models
    alias = tmp_path / "alias.safetensors"
    os.link(a, alias)
    before = digest(a)
    assert (
        cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(alias), "--overwrite"]) == 2
    )
    assert digest(a) == before


# --- temp files of killed writers ---------------------------------------------------------
_WRITER = """
import sys, time
from pathlib import Path
from autombw_cli.atomic import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"x" * 4096)
    print(tmp, flush=True)
    time.sleep(60)
"""


def _killed_writer_temp(target: Path) -> Path:
    """A temp file left by a writer killed with SIGKILL in the middle of an atomic write."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    tmp = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert tmp.is_file() and not target.exists()
    return tmp


def test_the_next_merge_removes_temps_of_killed_writers(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = models
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    killed = _killed_writer_temp(out_dir / "first.safetensors")
    assert killed.name.startswith(".autombw-tmp.")
    # a temp of a live writer (this process), and a file that is not ours, stay
    live = out_dir / f".autombw-tmp.{killed.name.split('.')[2]}.{os.getpid()}.x.abc.tmp"
    live.write_bytes(b"in progress")
    foreign = out_dir / ".someone-elses.tmp"
    foreign.write_bytes(b"not ours")
    # an old temp from another host (its PID means nothing here): stale by age
    old = out_dir / ".autombw-tmp.otherhost.1.y.abc.tmp"
    old.write_bytes(b"old")
    week_ago = time.time() - 7 * 86400
    os.utime(old, (week_ago, week_ago))

    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(out_dir / "second")]) == 0
    assert not killed.exists() and not old.exists()
    assert live.exists() and foreign.exists()
    assert (out_dir / "second.safetensors").is_file()
