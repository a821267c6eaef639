"""The Recipe value: .recipe.txt, JSON and safetensors-metadata forms (issue 2 §2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autombw_cli.blocks import Arch, Ordering, Weights, format_weight, layout
from autombw_cli.errors import AutombwError, JournalError, WeightsError
from autombw_cli.recipe import (
    MBWRT_METADATA_KEY,
    METADATA_KEY,
    Recipe,
    read_recipe_file,
    write_recipe_files,
)
from conftest import FIXTURES

FIXTURE = FIXTURES / "auto-mbw-rt" / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt"
STORED = FIXTURE.read_text(encoding="utf-8").splitlines()[5]


def sample(arch: Arch = Arch.SD1, te: float | None = None) -> Recipe:
    slots = layout(arch).slots
    values = {s: round(i / (len(slots) - 1), 3) for i, s in enumerate(slots)}
    return Recipe("a.safetensors", "b.ckpt", "out", Weights(arch, values, te))


def test_fixture_recipe_reads_exactly() -> None:
    r = read_recipe_file(FIXTURE)  # a console log is pasted below the weights line
    assert (r.model_a, r.model_b, r.output_name) == (
        "08b-AstolfoMix-_13a_14a.safetensors",
        "09b-AstolfoMix-_15a_16a.safetensors",
        "15b-AstolfoMix-08b09b",
    )
    assert r.position_id_fix == "Keep Original" and r.output_mode == "Max Precision"
    assert r.arch is Arch.SD1 and r.weights.text_encoder is None
    assert r.weights["OUT"] == 1.0 and r.weights["TIME_EMBED"] == 0.0
    assert r.to_text().splitlines()[5] == STORED
    assert r.to_text() == "\n".join(FIXTURE.read_text(encoding="utf-8").splitlines()[:6]) + "\n"


@pytest.mark.parametrize(
    "recipe",
    [sample(), sample(Arch.SD2), sample(Arch.SDXL), sample(te=0.25), sample(Arch.SDXL, 0.0)],
    ids=["sd1", "sd2", "sdxl", "sd1-te", "sdxl-te0"],
)
def test_text_and_json_round_trip(recipe: Recipe) -> None:
    assert Recipe.from_text(recipe.to_text()) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_safetensors_metadata(recipe.safetensors_metadata()) == recipe


def test_plain_sd1_text_has_no_extra_lines() -> None:
    lines = sample().to_text().splitlines()
    assert len(lines) == 6 and lines[0] == "modelA=a.safetensors"
    assert "arch=sd2" in sample(Arch.SD2).to_text()
    assert "text_encoder_weight=0.25" in sample(te=0.25).to_text()


def test_crlf_and_bom_read(tmp_path: Path) -> None:
    path = tmp_path / "x.recipe.txt"
    path.write_bytes(b"\xef\xbb\xbf" + sample().to_text().replace("\n", "\r\n").encode())
    assert read_recipe_file(path) == sample()


def test_upstream_order_swaps_the_last_two() -> None:
    text = "modelA=a\nmodelB=b\n" + ",".join(["0"] * 25 + ["0.25", "0.75"]) + "\n"
    assert Recipe.from_text(text).weights["OUT"] == 0.25
    up = Recipe.from_text(text, upstream=True)
    assert up.weights["TIME_EMBED"] == 0.25 and up.weights["OUT"] == 0.75


def test_float_text_round_trips() -> None:
    w = Weights.uniform(Arch.SD1, 0.5).replace({"IN00": 0.1 + 0.2, "OUT": 1e-7})
    text = Recipe("a", "b", "o", w).to_text()
    assert "0.30000000000000004" in text and "1e-07" in text
    assert Recipe.from_text(text).weights == w


def test_mbwrt_metadata_matches_runtime_block_merge() -> None:
    meta = sample().safetensors_metadata()
    mbwrt = json.loads(meta[MBWRT_METADATA_KEY])
    assert mbwrt["modelA"] == "a.safetensors" and mbwrt["type"] == "auto-mbw-rt"
    assert mbwrt["mbwrt_weights"] == sample().to_text().splitlines()[-1]
    assert json.loads(meta[METADATA_KEY])["weights"]["IN00"] == 0.0
    # a file carrying only the auto-MBW-rt key (or its historical typo) still reads
    only = {MBWRT_METADATA_KEY: meta[MBWRT_METADATA_KEY]}
    assert Recipe.from_safetensors_metadata(only) == sample()
    typo = {"sd_mbwrt_receipe": meta[MBWRT_METADATA_KEY]}
    assert Recipe.from_safetensors_metadata(typo) == sample()
    with pytest.raises(JournalError, match="no recipe found"):
        Recipe.from_safetensors_metadata({"format": "pt"})


def test_content_hash() -> None:
    assert sample().content_hash() == sample().content_hash()
    assert len(sample().content_hash()) == 12
    other = Recipe("a.safetensors", "b.ckpt", "out", sample().weights.replace({"M00": 0.123}))
    assert other.content_hash() != sample().content_hash()
    renamed = Recipe("a.safetensors", "b.ckpt", "other-name", sample().weights)
    assert renamed.content_hash() == sample().content_hash()  # output name is not the merge


def test_write_and_read_files(tmp_path: Path) -> None:
    txt, js = write_recipe_files(sample(te=0.5), tmp_path / "sub" / "best")
    assert txt.name == "best.recipe.txt" and js.name == "best.recipe.json"
    assert read_recipe_file(txt) == sample(te=0.5) == read_recipe_file(js)
    assert not list((tmp_path / "sub").glob(".*"))  # no temp files left


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("modelA=a\n" + STORED, JournalError, "missing modelB= line"),
        ("modelA=a\nmodelB=b\n", JournalError, "no weights line"),
        ("modelA=a\nmodelB=b\nhello there\n" + STORED, JournalError, "line 3 is neither"),
        ("modelA=a\nmodelB=b\n0.5,0.5\n", JournalError, "line 3: expected 27 values .* got 2"),
        ("modelA=a\nmodelB=b\n" + STORED + ",0.5", JournalError, "got 28"),
        ("modelA=a\nmodelB=b\narch=sd9\n" + STORED, JournalError, "unknown arch='sd9'"),
        ("modelA=a\nmodelB=b\narch=sdxl\n" + STORED, JournalError, "sdxl needs 22 values"),
        ("modelA=a\nmodelB=b\n0.5,,0.5" + ",0.5" * 24, JournalError, "got 26"),
        ("modelA=a\nmodelB=b\n1e999" + ",0.5" * 26, WeightsError, "line 3, position 1"),
        ("modelA=a\nmodelB=b\n.-" + ",0.5" * 26, WeightsError, "position 1: '.-' is not a"),
        (
            "modelA=a\nmodelB=b\ntext_encoder_weight=x\n" + STORED,
            WeightsError,
            "text_encoder_weight: 'x' is not a number",
        ),
    ],
)
def test_bad_recipe_text_says_where(text: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Recipe.from_text(text, source="r.txt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**json.loads(sample().to_json()), "model_b": None}), "model_b"),
        ('{"model_a": "a", "weights": {}}', "missing IN00"),
        ('{"model_a": "a", "model_b": "b", "weights": {"IN00": 1}}', "no value|missing"),
        ('{"model_a": "a", "model_b": "b", "weights": [1]}', "recipe JSON"),
        ('{"model_a": "a", "model_b": "b", "arch": "sd3", "weights": {}}', "sd3"),
    ],
)
def test_bad_recipe_json(text: str, message: str) -> None:
    with pytest.raises(JournalError, match=message):
        Recipe.from_json(text)


def test_recipe_json_missing_model_field() -> None:
    data = json.loads(sample().to_json())
    del data["model_b"]
    with pytest.raises(JournalError, match=r"r\.json: missing field 'model_b'"):
        Recipe.from_json(json.dumps(data), source="r.json")


def test_missing_and_unreadable_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no such file"):
        read_recipe_file(tmp_path / "none.recipe.txt")
    bad = tmp_path / "bad.recipe.txt"
    bad.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(JournalError, match="cannot read"):
        read_recipe_file(bad)


# --- property tests -------------------------------------------------------------------------
weight_values = st.floats(min_value=-1.0, max_value=2.0, allow_nan=False, allow_infinity=False)


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    arch = draw(st.sampled_from(list(Arch)))
    slots = layout(arch).slots
    values = draw(st.lists(weight_values, min_size=len(slots), max_size=len(slots)))
    te = draw(st.none() | weight_values)
    names = (
        st.text(
            st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=20
        )
        .map(str.strip)
        .filter(bool)
    )
    return Recipe(
        draw(names),
        draw(names),
        draw(
            st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=20)
        ).strip(),
        Weights(arch, dict(zip(slots, values, strict=True)), te),
        draw(st.sampled_from(["Keep Original", "Fix"])),
        draw(st.sampled_from(["Max Precision", "Runtime Snapshot"])),
    )


@settings(max_examples=150, deadline=None)
@given(recipes())
def test_any_recipe_round_trips_through_every_form(recipe: Recipe) -> None:
    assert Recipe.from_text(recipe.to_text()) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_safetensors_metadata(recipe.safetensors_metadata()) == recipe
    line = recipe.to_text().splitlines()[-1]
    assert line == ",".join(format_weight(v) for v in recipe.weights.to_list(Ordering.RECIPE))


recipe_like_text = st.lists(
    st.one_of(
        st.sampled_from(["modelA=a", "modelB=b", "modelO=o", "arch=sd2", "arch=sdxl", "arch=x"]),
        st.sampled_from(["text_encoder_weight=0.5", "text_encoder_weight=nan", "", "  "]),
        st.lists(
            st.sampled_from(["0.5", "1", "-0", "1e999", "nan", ".", "-", "e", "1e-3", ""]),
            min_size=0,
            max_size=30,
        ).map(",".join),
        st.text(max_size=40),
    ),
    max_size=8,
).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), recipe_like_text))
def test_recipe_text_parser_raises_only_project_errors(text: str) -> None:
    try:
        recipe = Recipe.from_text(text, source="fuzz")
    except AutombwError as exc:
        assert exc.message.startswith("fuzz")  # every error names its source
    else:
        assert Recipe.from_text(recipe.to_text()) == recipe


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def recipe_like_dicts(draw: st.DrawFn) -> object:
    base = json.loads(sample().to_json())
    for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=4)):
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(json_values)
    if draw(st.booleans()) and isinstance(base.get("weights"), dict) and base["weights"]:
        slot = draw(st.sampled_from(sorted(base["weights"])))
        base["weights"][slot] = draw(json_values)
    return base


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, recipe_like_dicts()))
def test_recipe_json_parser_raises_only_project_errors(data: object) -> None:
    try:
        recipe = Recipe.from_json(json.dumps(data), source="fuzz")
    except AutombwError as exc:
        assert exc.message.startswith("fuzz")
    else:
        assert Recipe.from_json(recipe.to_json()) == recipe
