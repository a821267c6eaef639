"""`autombw recover` and `autombw weights` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autombw_cli.blocks import Arch, Ordering, Weights, format_weight
from autombw_cli.cli import main
from autombw_cli.recipe import Recipe, read_recipe_file
from conftest import FIXTURES

MBWRT = FIXTURES / "auto-mbw-rt"
CSV = MBWRT / "history-15b-AstolfoMix-08b09b.csv"
RECIPE_WITH_LOG = MBWRT / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt"
LOG_1105 = MBWRT / "console-log-2023-11-05.txt"
STORED = RECIPE_WITH_LOG.read_text(encoding="utf-8").splitlines()[5]
STORED_NAT = (
    "0.4,0.9,0.5,0.6,0.5,0.0,0.9,0.9,1.0,0.4,0.3,0.8,0.3,1.0,"
    "0.9,0.6,0.8,0.9,0.7,0.6,1.0,0.9,0.6,0.7,0.3,0.6,0.0"
)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_recover_csv_prints_best_table_and_both_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["recover", str(CSV)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "best score: 0.6132534303822829 at row 89 (line 90)" in out
    assert STORED in lines  # the recipe line, unwrapped
    assert STORED_NAT in lines
    assert lines.index(STORED) < lines.index(STORED_NAT)
    assert "TIME_EMBED" in out and "OUT11" in out and "IN00" in out


def test_recover_console_log(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recover", str(LOG_1105)], capsys)
    assert code == 0
    assert "0.44875530845332806" in out
    assert "line 5 (Best score) + line 6 (Best parameter set)" in out


def test_recover_kind_log_on_a_recipe_with_a_pasted_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["recover", "--kind", "log", str(RECIPE_WITH_LOG), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["kind"] == "log"
    assert data["best"]["score"] == 0.6132534303822829
    assert data["best"]["recipe_order"] == STORED


def test_recover_json_top_k(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recover", str(CSV), "--json", "--top", "3"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["kind"] == "mbwrt-csv" and data["evaluations"] == 96
    assert data["best"]["recipe_order"] == STORED
    assert data["best"]["nat_order"] == STORED_NAT
    assert data["best"]["location"] == "row 89 (line 90)"
    assert [t["score"] for t in data["top"]] == sorted(
        (t["score"] for t in data["top"]), reverse=True
    )
    assert len(data["top"]) == 3
    assert set(data["best"]["weights"]) == set(Weights.uniform(Arch.SD1, 0).layout.slots)


def test_recover_top_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["recover", str(CSV), "--top", "2"], capsys)
    assert code == 0
    assert "top 2" in out and "0.6103003445753185" in out


def test_recover_out_writes_recipe_files_and_refuses_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "best.recipe.txt"
    argv = ["recover", str(CSV), "--out", str(target), "--model-a", "a.safetensors"]
    code, _, err = run([*argv, "--model-b", "b.safetensors"], capsys)
    assert code == 0, err
    recipe = read_recipe_file(target)
    assert recipe.model_a == "a.safetensors" and recipe.output_name == "best"
    assert target.read_text().splitlines()[-1] == STORED
    assert read_recipe_file(tmp_path / "best.recipe.json") == recipe
    before = target.read_bytes()
    code, _, err = run([*argv, "--model-b", "other.safetensors"], capsys)
    assert code == 7
    assert "already exists" in err and "--force" in err
    assert target.read_bytes() == before
    code, _, _ = run([*argv, "--model-b", "other.safetensors", "--force"], capsys)
    assert code == 0
    assert read_recipe_file(target).model_b == "other.safetensors"


def test_recover_recipe_out_keeps_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(["recover", str(RECIPE_WITH_LOG), "--out", str(tmp_path / "r")], capsys)
    assert code == 0
    recipe = read_recipe_file(tmp_path / "r.recipe.txt")
    assert recipe.model_b == "09b-AstolfoMix-_15a_16a.safetensors"
    assert recipe.output_name == "15b-AstolfoMix-08b09b"


@pytest.mark.parametrize(
    ("content", "message", "code"),
    [
        (None, "no such file", 6),
        (b"", "the file is empty", 6),
        (b"\x00\x00garbage", "binary data", 6),
        (b"0,1,2,score\n0.1,0.2,0.3,0.5\n", "expected weight columns 0..26", 6),
        (b"text without evaluations testweights: \n", "no complete evaluation found", 6),
        (b"modelA=a\nmodelB=b\n0.1,abc\n", "neither key=value nor the weights line", 6),
        (b"modelA=a\nmodelB=b\n" + b"0.5," * 26 + b"1e999\n", "position 27", 2),
    ],
)
def test_recover_bad_sources_exit_non_zero_and_write_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
    code: int,
) -> None:
    source = tmp_path / "source.txt"
    if content is not None:
        source.write_bytes(content)
    out = tmp_path / "out" / "best"
    rc, stdout, err = run(["recover", str(source), "--out", str(out)], capsys)
    assert rc == code
    first = err.strip().splitlines()[0]
    assert first.startswith("error:") and str(source) in err.replace("\n", "")
    assert message in err.replace("\n", "")
    assert stdout == ""
    assert not (tmp_path / "out").exists()


def test_recover_unknown_kind_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["recover", str(CSV), "--kind", "bogus"], capsys)
    assert code == 2 and "bogus" in err
    code, _, err = run(["recover", str(CSV), "-o", str(tmp_path / "m.safetensors")], capsys)
    assert code == 2 and "--merge" in err
    code, _, err = run(["recover", str(CSV), "--merge", "a", "b"], capsys)
    assert code == 2 and "-o OUT" in err
    code, _, err = run(
        ["recover", str(CSV), "--merge", "a", "b", "-o", "x", "--dtype", "fp8"], capsys
    )
    assert code == 2 and "fp8" in err


def test_recover_kind_forced_wrong_gives_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(["recover", str(LOG_1105), "--kind", "mbwrt-csv"], capsys)
    assert code == 6 and "expected weight columns" in err


def test_recover_merge_runs_the_offline_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("autombw_cli.merging.offline")
    sim = pytest.importorskip("autombw_cli.sim.checkpoints")
    import torch
    from safetensors import safe_open

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sim.write_checkpoint(a, sim.random_state_dict(Arch.SD1, "tiny", 1, torch.float32))
    sim.write_checkpoint(b, sim.random_state_dict(Arch.SD1, "tiny", 2, torch.float32))
    out = tmp_path / "merged.safetensors"
    argv = ["recover", str(CSV), "--merge", str(a), str(b), "-o", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
    recipe = Recipe.from_safetensors_metadata(meta)
    assert ",".join(format_weight(v) for v in recipe.weights.to_list(Ordering.RECIPE)) == STORED
    assert recipe.model_a == "a.safetensors"
    code, _, err = run(argv, capsys)
    assert code == 7 and "already exists" in err


# --- autombw weights -------------------------------------------------------------------------
def test_weights_convert_nat_to_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["weights", "convert", STORED_NAT, "--from", "nat"], capsys)
    assert code == 0
    assert out.strip() == STORED
    code, out, _ = run(["weights", "convert", STORED, "--to", "nat"], capsys)
    assert out.strip() == STORED_NAT


def test_weights_convert_forms(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["weights", "convert", "WRAP08", "--to", "blocks"], capsys)
    assert code == 0
    assert out.strip() == "1.0,1.0,1.0,1.0" + ",0.0" * 17 + ",1.0,1.0,1.0,1.0"
    code, out, _ = run(["weights", "convert", "0.25", "--to", "named", "--arch", "sdxl"], capsys)
    assert out.strip().endswith("LABEL_EMB:0.25") and out.count(":") == 22
    code, out, _ = run(["weights", "convert", "0.5,0.25", "--to", "json"], capsys)
    assert code == 2
    code, out, _ = run(
        ["weights", "convert", "0.5," + ",".join(["0.25"] * 25), "--to", "json"], capsys
    )
    assert json.loads(out)["BASE"] == 0.5


def test_weights_convert_to_blocks_warns_about_what_it_drops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(["weights", "convert", STORED, "--to", "blocks"], capsys)
    assert code == 0 and out.count(",") == 24
    assert "no OUT=1.0, TIME_EMBED=0.0;" in err.replace("\n", " ")
    code, out, err = run(["weights", "convert", "0.5", "--to", "blocks"], capsys)
    assert err == ""


def test_weights_convert_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    values = ["0"] * 25 + ["0.25", "0.75"]
    code, out, _ = run(["weights", "convert", ",".join(values), "--from", "upstream"], capsys)
    assert code == 0 and out.strip().endswith("0.75,0.25")
    code, out, _ = run(["weights", "convert", ",".join(values), "--order", "upstream"], capsys)
    assert code == 0 and out.strip().endswith("0.75,0.25")
    code, out, _ = run(["weights", "convert", "1.5", "--extrapolate"], capsys)
    assert code == 0 and out.strip() == ",".join(["1.5"] * 27)


def test_weights_convert_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["weights", "convert", "0.1,x,0.3"], capsys)
    assert code == 2 and "position 2: 'x' is not a number" in err


def test_weights_presets_lists_builtins_and_user_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["weights", "presets", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["GRAD_V"][0] == 1.0 and len(data) >= 30
    user = tmp_path / "mine.tsv"
    user.write_text("MINE\t" + ",".join(["0.5"] * 25) + "\n")
    code, out, _ = run(["weights", "presets", "--presets", str(user)], capsys)
    assert code == 0 and "MINE" in out and "GRAD_V" in out
    code, out, _ = run(["weights", "convert", "mine", "--presets", str(user)], capsys)
    assert out.strip() == ",".join(["0.5"] * 27)


def test_recover_merge_failure_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("autombw_cli.merging.offline")
    out = tmp_path / "merged.safetensors"
    argv = ["recover", str(CSV), "--merge", str(tmp_path / "a.safetensors")]
    argv += [str(tmp_path / "b.safetensors"), "-o", str(out), "--out", str(tmp_path / "best")]
    code, _, err = run(argv, capsys)
    assert code != 0 and "a.safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_recover_log_warnings_are_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "console.log"
    lines = ["INFO - testweights: 0.1,0.2"] * 15  # 15 truncated evaluations
    lines += ["INFO - testweights: " + STORED_NAT, "INFO - test score: 0.25"]
    log.write_text("\n".join(lines) + "\n")
    code, out, err = run(["recover", str(log)], capsys)
    assert code == 0 and STORED in out.splitlines()
    assert err.count("warning:") == 11 and "and 5 more" in err
    code, out, _ = run(["recover", str(log), "--json"], capsys)
    assert len(json.loads(out)["warnings"]) == 15


@pytest.mark.slow
def test_console_script_user_error_has_no_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = tmp_path / "missing.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "autombw_cli", "recover", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 6
    assert proc.stderr.startswith("error:") and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recover_recipe_json_and_upstream_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = read_recipe_file(RECIPE_WITH_LOG)
    js = tmp_path / "x.recipe.json"
    js.write_text(recipe.to_json())
    code, out, _ = run(["recover", str(js), "--json"], capsys)
    assert code == 0 and json.loads(out)["best"]["recipe_order"] == STORED
    upstream = tmp_path / "up.recipe.txt"
    upstream.write_text("modelA=a\nmodelB=b\n" + ",".join(["0"] * 25 + ["0.25", "0.75"]) + "\n")
    code, out, _ = run(["recover", str(upstream), "--upstream", "--json"], capsys)
    weights = json.loads(out)["best"]["weights"]
    assert code == 0 and (weights["TIME_EMBED"], weights["OUT"]) == (0.25, 0.75)


def test_a_recipe_with_a_pasted_console_log_points_at_kind_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = str(MBWRT / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt")
    code, out, err = run(["recover", source], capsys)
    assert code == 0 and "(recipe)" in out
    assert "also holds an auto-MBW-rt console log" in err and "--kind log" in err
    code, out, err = run(["recover", source, "--kind", "log"], capsys)
    assert code == 0 and "(log)" in out and "0.6132534303822829" in out
    assert "console log" not in err


def test_out_without_model_names_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = str(MBWRT / "console-log-2023-11-05.txt")
    code, _, err = run(["recover", log, "--out", str(tmp_path / "best")], capsys)
    assert code == 0 and "models A and B are empty" in err and "--model-a" in err
    named = ["--model-a", "a.safetensors", "--model-b", "b.safetensors", "--force"]
    code, _, err = run(["recover", log, "--out", str(tmp_path / "best"), *named], capsys)
    assert code == 0 and "empty" not in err
    assert read_recipe_file(tmp_path / "best.recipe.txt").model_a == "a.safetensors"
