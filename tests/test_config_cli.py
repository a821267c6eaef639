"""`autombw config check|schema` and `autombw payload new|show|expand`: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import autombw_cli.cli  # registers every command group
from autombw_cli.cli import main
from autombw_cli.cli._app import app
from conftest import REPO_ROOT, SHIPPED_CONFIGS

assert autombw_cli.cli


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console-script entry point; (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "p.json").write_text(
        '{"prompt": "a __color__ cat", "wildcard_type": "random", "n_iter": 3}'
    )
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "color.txt").write_text("red\nblue\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        "models: {a: a.safetensors, b: b.safetensors}\n"
        "instances:\n"
        "  - url: http://127.0.0.1:7860\n"
        "    auth: {user_env: CLI_TEST_USER, password_env: CLI_TEST_PASSWORD}\n"
        "payloads: {files: [p.json], wildcards: wildcards}\n"
    )
    return path


# --- config -----------------------------------------------------------------------------
def test_config_check_prints_the_resolved_config(config: Path, capsys, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CLI_TEST_USER", "alice")
    monkeypatch.setenv("CLI_TEST_PASSWORD", "hunter2")
    code, out, err = run(["config", "check", str(config)], capsys)
    assert code == 0
    resolved = yaml.safe_load(out)
    assert resolved["search"]["blocks"][0] == "IN00"
    assert resolved["payloads"]["files"] == [str(config.parent / "p.json")]
    assert "hunter2" not in out + err and "CLI_TEST_PASSWORD" in out
    # n_iter 3 but two colours and a fixed seed: each distinct prompt once (a warning says so)
    assert "ok:" in err and "2 prompt(s)" in err and "only 2 distinct" in caplog.text


def test_config_check_json(config: Path, capsys) -> None:
    code, out, _ = run(["config", "check", "--json", str(config)], capsys)
    assert code == 0
    assert json.loads(out)["search"]["max_evaluations"] == 270


def test_config_check_warns_about_unset_auth_variables(config: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("CLI_TEST_USER", raising=False)
    monkeypatch.delenv("CLI_TEST_PASSWORD", raising=False)
    code, _, err = run(["config", "check", str(config)], capsys)
    assert code == 0
    assert "warning:" in err and "CLI_TEST_USER" in err


def test_config_check_bad_config_exits_2(config: Path, capsys) -> None:
    config.write_text(config.read_text() + "serch: {}\n")
    code, out, err = run(["config", "check", str(config)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error:") and "c.yaml:6" in err and "search" in err


def test_config_check_missing_wildcard_exits_2(config: Path, capsys) -> None:
    (config.parent / "wildcards" / "color.txt").unlink()
    code, _, err = run(["config", "check", str(config)], capsys)
    assert code == 2 and "__color__" in err


def test_config_check_broken_payload_exits_2(config: Path, capsys) -> None:
    (config.parent / "p.json").write_text('{"prompt": "x",}')
    code, _, err = run(["config", "check", str(config)], capsys)
    assert code == 2 and "p.json:1" in err and "malformed JSON" in err


def test_config_check_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = run(["config", "check", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and "none.yaml" in err


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_check(name: str, capsys) -> None:
    code, _, err = run(["config", "check", str(REPO_ROOT / "configs" / name)], capsys)
    assert code == 0, err


def test_config_schema(capsys) -> None:
    code, out, _ = run(["config", "schema"], capsys)
    assert code == 0
    schema = json.loads(out)
    assert "search" in schema["properties"] and "$defs" in schema


def test_cli_runner_exit_codes(config: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(config)])
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["config", "schema"]).exit_code == 0
    assert runner.invoke(app, ["config", "--help"]).exit_code == 0
    assert runner.invoke(app, ["payload", "--help"]).exit_code == 0
    # CliRunner bypasses main(): a user error surfaces as the AutombwError it raised
    bad = runner.invoke(app, ["config", "check", str(config.parent / "nope.yaml")])
    assert bad.exit_code != 0 and getattr(bad.exception, "exit_code", None) == 2


# --- payload ----------------------------------------------------------------------------
def test_payload_new_show_expand(tmp_path: Path, capsys) -> None:
    path = tmp_path / "cat.json"
    code, _, err = run(
        ["payload", "new", str(path), "--prompt", "a {red|blue} cat", "--seed", "-1",
         "--n-iter", "2", "--wildcard-type", "combinatorial", "--steps", "12"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "created" in err
    data = json.loads(path.read_text())
    assert data["prompt"] == "a {red|blue} cat" and data["steps"] == 12 and data["seed"] == -1

    code, out, _ = run(["payload", "show", str(path)], capsys)
    assert code == 0 and "wildcard_type" in out and "combinatorial" in out and "txt2img" in out

    code, out, _ = run(["payload", "expand", str(path), "--seed", "4"], capsys)
    assert code == 0
    assert "a red cat" in out and "a blue cat" in out and "derived" in out

    code, out, _ = run(["payload", "expand", "--json", str(path)], capsys)
    bodies = json.loads(out)
    assert [b["prompt"] for b in bodies] == ["a red cat", "a blue cat"]
    assert all(b["seed"] >= 0 and "wildcard_type" not in b for b in bodies)


def test_payload_new_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text("{}")
    code, _, err = run(["payload", "new", str(path), "--prompt", "x"], capsys)
    assert code == 7 and "--force" in err
    code, _, _ = run(["payload", "new", str(path), "--prompt", "x", "--force"], capsys)
    assert code == 0 and json.loads(path.read_text())["prompt"] == "x"


def test_payload_new_bad_option_exits_2(tmp_path: Path, capsys) -> None:
    code, _, err = run(
        ["payload", "new", str(tmp_path / "p.json"), "--prompt", "x", "--wildcard-type", "lucky"],
        capsys,
    )
    assert code == 2 and "wildcard_type" in err


def test_payload_expand_uses_the_wildcards_folder_beside_the_file(capsys) -> None:
    code, out, _ = run(
        ["payload", "expand", str(REPO_ROOT / "payloads" / "landscapes.yaml")], capsys
    )
    assert code == 0 and "landscapes" in out and "__" not in out


def test_payload_expand_missing_wildcard_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"prompt": "__nope__", "wildcard_type": "random"}')
    code, _, err = run(["payload", "expand", str(path), "--wildcards", str(tmp_path)], capsys)
    assert code == 2 and "__nope__" in err and str(tmp_path) in err.replace("\n", "")


def test_payload_show_broken_file_exits_2(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"steps": "many"}')
    code, _, err = run(["payload", "show", str(path)], capsys)
    assert code == 2 and "p.json:1" in err and "steps" in err
