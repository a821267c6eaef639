"""`autombw merge` end to end through the CLI entry point: exit codes and first error lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autombw_cli.blocks import UNET_PREFIX, Arch, Ordering, Weights
from autombw_cli.recipe import Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from conftest import cli_exit_code

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    a = write_checkpoint(d / "A.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    b = write_checkpoint(d / "B.safetensors", random_state_dict(Arch.SD1, "tiny", 2))
    return a, b


def _recipe_of(path: Path) -> Recipe:
    with safe_open(path, "pt") as f:
        return Recipe.from_safetensors_metadata(f.metadata())


def _first_err_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[0]


def test_merge_writes_output_recipe_and_summary(models, tmp_path, capsys) -> None:
    a, b = models
    code = cli_exit_code(
        ["merge", str(a), str(b), "--weights", "0.25", "-o", str(tmp_path / "mix")]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "mix.safetensors").exists()
    assert (tmp_path / "mix.recipe.txt").exists() and (tmp_path / "mix.recipe.json").exists()
    assert "sd1" in out and "OUT11" in out and "mix.safetensors" in out
    recipe = _recipe_of(tmp_path / "mix.safetensors")
    assert recipe.weights == Weights.uniform(Arch.SD1, 0.25)
    assert (recipe.model_a, recipe.model_b, recipe.output_name) == (
        "A.safetensors",
        "B.safetensors",
        "mix",
    )


def test_nat_order_and_text_encoder_weight(models, tmp_path) -> None:
    a, b = models
    values = [i / 26 for i in range(27)]
    text = ",".join(str(v) for v in values)
    args = ["merge", str(a), str(b), "-w", text, "--order", "nat", "-o", str(tmp_path / "n")]
    assert cli_exit_code([*args, "--text-encoder-weight", "0.5", "--dtype", "fp32"]) == 0
    recipe = _recipe_of(tmp_path / "n.safetensors")
    assert recipe.weights.values == Weights.from_list(Arch.SD1, values, Ordering.NAT).values
    assert recipe.weights["OUT"] == values[13]  # nat puts OUT at position 13
    assert recipe.weights.text_encoder == 0.5
    merged = load_file(tmp_path / "n.safetensors")
    assert merged[UNET_PREFIX + "out.2.weight"].dtype == torch.float32


def test_preset_and_recipe_file_inputs(models, tmp_path) -> None:
    a, b = models
    assert cli_exit_code(["merge", str(a), str(b), "-w", "GRAD_V", "-o", str(tmp_path / "p")]) == 0
    grad_v = _recipe_of(tmp_path / "p.safetensors").weights
    assert grad_v["IN00"] == 1.0 and grad_v["M00"] == 0.0
    recipe = FIXTURES / "auto-mbw-rt" / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt"
    assert (
        cli_exit_code(["merge", str(a), str(b), "--recipe", str(recipe), "-o", str(tmp_path / "r")])
        == 0
    )
    got = _recipe_of(tmp_path / "r.safetensors")
    lines = recipe.read_text().splitlines()
    values_line = next(line for line in lines if line[:1].isdigit())
    want = [float(v) for v in values_line.split(",")]
    assert got.weights.to_list(Ordering.RECIPE) == want
    assert got.model_a == "A.safetensors"


def test_existing_output_exits_7_and_force_overwrites(models, tmp_path, capsys) -> None:
    a, b = models
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"old")
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(target)]) == 7
    assert "already exists" in _first_err_line(capsys)
    assert target.read_bytes() == b"old"
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(target), "--force"]) == 0
    assert set(load_file(target)) == set(load_file(a))


def test_mismatched_checkpoints_exit_4_naming_the_key(models, tmp_path, capsys) -> None:
    a, _ = models
    sd = random_state_dict(Arch.SD1, "tiny", 2)
    key = UNET_PREFIX + "middle_block.1.proj_out.bias"
    del sd[key]
    b = write_checkpoint(tmp_path / "B.safetensors", sd)
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(tmp_path / "o")]) == 4
    assert key in _first_err_line(capsys)
    xl = write_checkpoint(tmp_path / "xl.safetensors", random_state_dict(Arch.SDXL, "tiny", 2))
    assert cli_exit_code(["merge", str(a), str(xl), "-w", "0.5", "-o", str(tmp_path / "o")]) == 4
    assert "sdxl" in _first_err_line(capsys)
    assert not (tmp_path / "o.safetensors").exists()


def test_not_a_checkpoint_exits_4_and_missing_file_exits_2(models, tmp_path, capsys) -> None:
    a, _ = models
    junk = tmp_path / "notes.safetensors"
    junk.write_text("just some text")
    assert cli_exit_code(["merge", str(a), str(junk), "-w", "0.5", "-o", str(tmp_path / "o")]) == 4
    assert "not a valid checkpoint" in _first_err_line(capsys)
    assert (
        cli_exit_code(["merge", str(tmp_path / "nope.ckpt"), str(a), "-w", "0.5", "-o", "o"]) == 2
    )
    assert "no such file" in _first_err_line(capsys)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-w", "0.1,0.2,0.3"], "got 3 values"),
        (["-w", "0.5,abc" + ",0.5" * 25], "position 2"),
        (["-w", "1.5"], "outside 0..1"),
        ([], "exactly one of --weights and --recipe"),
        (["-w", "0.5", "--recipe", "x.recipe.txt"], "exactly one of --weights and --recipe"),
        (["-w", "0.5", "--text-encoder-weight", "3"], "BASE=3.0 is outside"),
    ],
)
def test_bad_weights_exit_2(models, tmp_path, capsys, extra, needle) -> None:
    a, b = models
    assert cli_exit_code(["merge", str(a), str(b), *extra, "-o", str(tmp_path / "o")]) == 2
    assert needle in _first_err_line(capsys)
    assert not (tmp_path / "o.safetensors").exists()


def test_extrapolate_allows_out_of_range(models, tmp_path) -> None:
    a, b = models
    args = ["merge", str(a), str(b), "-w", "1.5", "--extrapolate", "-o", str(tmp_path / "e")]
    assert cli_exit_code(args) == 0
    assert _recipe_of(tmp_path / "e.safetensors").weights["M00"] == 1.5


def test_other_pickle_output_names_are_refused(models, tmp_path, capsys) -> None:
    a, b = models  # .ckpt is written (test_ckpt_format.py); .pt/.pth/.bin are refused
    assert cli_exit_code(["merge", str(a), str(b), "-w", "0.5", "-o", str(tmp_path / "m.pt")]) == 2
    assert ".safetensors or .ckpt files only" in _first_err_line(capsys)


def test_upstream_order_swaps_out_and_time_embed(models, tmp_path) -> None:
    a, b = models
    values = [0.5] * 25 + [0.1, 0.9]  # upstream: ..., TIME_EMBED, OUT
    text = ",".join(str(v) for v in values)
    args = ["merge", str(a), str(b), "-w", text, "--order", "upstream", "-o", str(tmp_path / "u")]
    assert cli_exit_code(args) == 0
    weights = _recipe_of(tmp_path / "u.safetensors").weights
    assert (weights["TIME_EMBED"], weights["OUT"]) == (0.1, 0.9)
