"""Named presets from preset.tsv files (built-in copy of auto-MBW-rt's, plus user files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autombw_cli.blocks import Arch, Ordering, Weights, parse_weights
from autombw_cli.errors import WeightsError
from autombw_cli.presets import (
    builtin_presets,
    find_preset,
    load_presets,
    parse_presets,
    read_preset_file,
)
from conftest import FIXTURES

FIXTURE_TSV = FIXTURES / "auto-mbw-rt" / "preset.tsv"
FLAT = ",".join(["0.5"] * 25)


def test_builtin_presets_are_auto_mbw_rts_file() -> None:
    builtin = builtin_presets()
    assert dict(builtin) == dict(read_preset_file(FIXTURE_TSV))
    assert len(builtin) == 38
    assert list(builtin)[:3] == ["GRAD_V", "GRAD_A", "FLAT_25"]
    assert builtin["GRAD_V"][1] == 0.9166666667  # the text's value, not a recomputed 11/12
    assert builtin["SMOOTHSTEP*2"][12] == 1.0


def test_every_builtin_preset_is_valid_sd1_weights() -> None:
    builtin = builtin_presets()
    for name in builtin:
        w = parse_weights(name, presets=builtin)
        assert w.to_list(Ordering.BLOCKS) == list(builtin[name])


def test_preset_expands_to_27_slots_like_the_old_tools() -> None:
    w = parse_weights("grad_v", presets=builtin_presets())  # names are case-insensitive
    assert w["IN00"] == 1.0 and w["TIME_EMBED"] == 1.0  # TIME_EMBED takes IN00's value
    assert w["M00"] == 0.0
    assert w["OUT11"] == 1.0 and w["OUT"] == 1.0  # OUT takes OUT11's value
    wrap = parse_weights("WRAP08", presets=builtin_presets())
    assert wrap.to_list(Ordering.RECIPE) == [1.0] * 4 + [0.0] * 17 + [1.0] * 4 + [1.0, 1.0]


def test_user_file_overrides_and_extends(tmp_path: Path) -> None:
    user = tmp_path / "mine.tsv"
    user.write_text(
        "preset_name\tpreset_weights\r\n"
        "# my presets\r\n"
        f"flat_25\t{FLAT}\r\n"
        "\r\n"
        f"HALF_TE\t0.2,{FLAT}\r\n"
    )
    merged = load_presets(user)
    assert "FLAT_25" not in merged and merged["flat_25"] == (0.5,) * 25
    assert "GRAD_V" in merged
    assert parse_weights("FLAT_25", presets=merged) == Weights.uniform(Arch.SD1, 0.5)
    assert parse_weights("half_te", presets=merged).text_encoder == 0.2
    assert find_preset(merged, " half_te ") == ("HALF_TE", (0.2,) + (0.5,) * 25)
    assert find_preset(merged, "nope") is None
    assert dict(load_presets(user, builtin=False)) == {
        "flat_25": (0.5,) * 25,
        "HALF_TE": (0.2,) + (0.5,) * 25,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A\t" + ",".join(["0.5"] * 24), r"p\.tsv: line 1 \(A\): expected 25 values .* got 24"),
        ("A\t" + FLAT + "\nB\t0.5,x" + FLAT[3:], r"line 2 \(B\): value 2 'x' is not a number"),
        ("A\t" + FLAT.replace("0.5", "inf", 1), "value 1 'inf' is not a finite number"),
        (f"A\t{FLAT}\na\t{FLAT}", r"line 2: preset 'a' is defined twice \(first on line 1\)"),
        (f"A {FLAT}", "2 tab-separated cells"),
        (f"A\t{FLAT}\tC", "got 3 cell"),
        (f"0.5\t{FLAT}", "not a valid name"),
        (f"A,B\t{FLAT}", "not a valid name"),
    ],
)
def test_bad_preset_files_say_where(text: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_presets(text, source="p.tsv")


def test_missing_preset_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.tsv: no such preset file"):
        load_presets(tmp_path / "nope.tsv")


def test_sd1_preset_on_sdxl_is_a_clear_error() -> None:
    with pytest.raises(WeightsError, match="preset GRAD_V: expected 19 or 20 values"):
        parse_weights("GRAD_V", Arch.SDXL, presets=builtin_presets())


def test_out_of_range_preset_is_rejected_when_used() -> None:
    presets = parse_presets("BIG\t" + ",".join(["1.5"] * 25))
    with pytest.raises(WeightsError, match=r"preset BIG: IN00=1\.5 is outside 0\.\.1"):
        parse_weights("BIG", presets=presets)
    assert parse_weights("BIG", presets=presets, extrapolation=True)["OUT"] == 1.5
