"""YAML alias bombs ("billion laughs") and alias cycles in config files are refused by name,
before anything walks the expanded document (the line map, validation). Payload files go
through the same reader: tests/test_payload_safety.py::test_a_yaml_alias_bomb_payload_is_refused.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autombw_cli.config import load_config
from autombw_cli.errors import ConfigError
from autombw_cli.yamlio import MAX_YAML_NODES, read_document
from search_helpers import write_search_config


def _laughs(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_config_is_refused(tmp_path: Path) -> None:
    path = write_search_config(tmp_path)
    path.write_text(path.read_text() + _laughs(9) + "x-bomb: *a8\n")  # 10**9 values expanded
    with pytest.raises(ConfigError, match=r"search\.yaml: refused: its aliases") as info:
        load_config(path)
    assert info.value.hint and "anchors" in info.value.hint


def test_an_alias_cycle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [x, *a]\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml: refused: an alias .* contains it"):
        read_document(path, what="config")
    path.write_text("m: &m {k: *m}\n")
    with pytest.raises(ConfigError, match="contains it"):
        read_document(path, what="config")


def test_just_past_the_limit_is_refused_and_just_under_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    # 3 levels of 10 x 10 x 10 leaves plus lists: about 1111 nodes per top alias use
    uses = MAX_YAML_NODES // 1111 + 2
    path.write_text(_laughs(3) + "big: [" + ", ".join(["*a2"] * uses) + "]\n")
    with pytest.raises(ConfigError, match="refused"):
        read_document(path, what="config")
    path.write_text(_laughs(3) + "big: [" + ", ".join(["*a2"] * 5) + "]\n")
    doc = read_document(path, what="config")
    assert len(doc.data["big"]) == 5 and doc.data["big"][4][9][9][9] == "lol"


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "base: &base {steps: 4, width: 64}\nx: {<<: *base, steps: 8}\ny: [*base, *base]\n"
    )
    doc = read_document(path, what="config")
    assert doc.data["x"] == {"steps": 8, "width": 64}
    assert doc.data["y"] == [{"steps": 4, "width": 64}] * 2
    assert doc.line_of(("x", "steps")) == 2


def test_deep_nesting_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml"):
        read_document(path, what="config")


@pytest.mark.slow
def test_cli_config_check_refuses_the_bomb(tmp_path: Path) -> None:
    path = write_search_config(tmp_path)
    path.write_text(path.read_text() + _laughs(9) + "x-bomb: *a8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "autombw_cli", "config", "check", path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: search.yaml: refused"), proc.stderr
    assert "Traceback" not in proc.stderr
