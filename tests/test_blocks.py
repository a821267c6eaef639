"""Block layouts, orderings and the Weights value (DOMAIN.md §2-3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autombw_cli.blocks import (
    Arch,
    Ordering,
    Weights,
    detect_arch,
    format_weight,
    layout,
    parse_weights,
)
from autombw_cli.errors import AutombwError, ModelMismatchError, WeightsError

FIXTURE_NAT = (
    "0.4,0.9,0.5,0.6,0.5,0.0,0.9,0.9,1.0,0.4,0.3,0.8,0.3,1.0,"
    "0.9,0.6,0.8,0.9,0.7,0.6,1.0,0.9,0.6,0.7,0.3,0.6,0.0"
)
FIXTURE_RECIPE = (
    "0.4,0.9,0.5,0.6,0.5,0.0,0.9,0.9,1.0,0.4,0.3,0.8,0.3,"
    "0.9,0.6,0.8,0.9,0.7,0.6,1.0,0.9,0.6,0.7,0.3,0.6,1.0,0.0"
)


def test_slot_counts() -> None:
    assert len(layout(Arch.SD1).slots) == 27
    assert len(layout(Arch.SD2).slots) == 27
    assert len(layout(Arch.SDXL).slots) == 22
    assert layout(Arch.SDXL).slots[-3:] == ("OUT", "TIME_EMBED", "LABEL_EMB")


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("model.diffusion_model.input_blocks.0.0.weight", "IN00"),
        ("model.diffusion_model.input_blocks.1.1.proj_in.weight", "IN01"),
        ("model.diffusion_model.input_blocks.10.0.in_layers.0.weight", "IN10"),
        ("model.diffusion_model.input_blocks.11.0.skip", "IN11"),
        ("model.diffusion_model.middle_block.1.norm.weight", "M00"),
        ("model.diffusion_model.output_blocks.1.0.skip", "OUT01"),
        ("model.diffusion_model.output_blocks.11.1.x", "OUT11"),
        ("model.diffusion_model.out.0.weight", "OUT"),
        ("model.diffusion_model.out.2.bias", "OUT"),
        ("model.diffusion_model.time_embed.0.weight", "TIME_EMBED"),
        ("cond_stage_model.transformer.text_model.embeddings.position_ids", None),
        ("first_stage_model.decoder.conv_in.weight", None),
        ("model_ema.decay", None),
    ],
)
def test_sd1_key_to_slot(key: str, slot: str | None) -> None:
    assert layout(Arch.SD1).slot_of(key) == slot


def test_sdxl_keys_outside_range_are_unmapped() -> None:
    lay = layout(Arch.SDXL)
    assert lay.slot_of("model.diffusion_model.input_blocks.8.0.x") == "IN08"
    assert lay.slot_of("model.diffusion_model.input_blocks.9.0.x") is None
    assert lay.slot_of("model.diffusion_model.label_emb.0.0.weight") == "LABEL_EMB"
    assert layout(Arch.SD1).slot_of("model.diffusion_model.label_emb.0.0.weight") is None


def test_nat_to_recipe_matches_fixture() -> None:
    w = parse_weights(FIXTURE_NAT, ordering=Ordering.NAT)
    assert ",".join(format_weight(v) for v in w.to_list(Ordering.RECIPE)) == FIXTURE_RECIPE
    assert w["OUT"] == 1.0 and w["TIME_EMBED"] == 0.0 and w["OUT00"] == 0.9


def test_upstream_order_swaps_out_and_time_embed() -> None:
    values = [0.0] * 25 + [0.25, 0.75]
    w = parse_weights(",".join(map(str, values)), ordering=Ordering.UPSTREAM, allow_upstream=True)
    assert w["TIME_EMBED"] == 0.25 and w["OUT"] == 0.75
    with pytest.raises(WeightsError, match="read-only"):
        parse_weights(",".join(map(str, values)), ordering=Ordering.UPSTREAM)
    with pytest.raises(ValueError):
        w.to_list(Ordering.UPSTREAM)


def test_blocks_lists_fill_time_embed_and_out() -> None:
    values = [i / 100 for i in range(25)]
    w = parse_weights(",".join(map(str, values)))
    assert w["IN00"] == 0.0 and w["TIME_EMBED"] == 0.0
    assert w["OUT11"] == 0.24 and w["OUT"] == 0.24
    assert w.text_encoder is None
    w26 = parse_weights("0.5," + ",".join(map(str, values)))
    assert w26.text_encoder == 0.5 and w26.to_dict() == w.to_dict()
    assert w.to_list(Ordering.BLOCKS) == values


def test_sdxl_blocks_list() -> None:
    w = parse_weights(",".join(["0.1"] * 20), Arch.SDXL)
    assert w.text_encoder == 0.1 and w["LABEL_EMB"] == 0.1 and len(w) == 22


def test_named_string_round_trip_and_aliases() -> None:
    w = Weights.uniform(Arch.SD1, 0.5, text_encoder=0.2).replace({"OUT05": 0.125})
    again = parse_weights(w.to_named_string())
    assert again == w
    lower = parse_weights(w.to_named_string().lower().replace("in0", "in_"))
    assert lower == w


def test_single_number_is_uniform() -> None:
    assert parse_weights("0.3") == Weights.uniform(Arch.SD1, 0.3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,0.2,abc" + ",0.1" * 24, "position 3: 'abc' is not a number"),
        (",".join(["0.5"] * 24), "got 24 values; expected 27"),
        (",".join(["0.5"] * 26) + ",nan", "position 27"),
        ("IN00:0.5", "no value for IN01"),
        ("IN99:0.5", "unknown block name"),
        ("IN00:0.5,IN00:0.4", "given twice"),
        ("", "empty"),
        ("1.5", "outside 0..1"),
    ],
)
def test_bad_weights_say_where(text: str, message: str) -> None:
    with pytest.raises(WeightsError, match=message):
        parse_weights(text)


def test_extrapolation_range() -> None:
    assert parse_weights("1.5", extrapolation=True)["IN00"] == 1.5
    with pytest.raises(WeightsError, match=r"outside -1\.\.2"):
        parse_weights("2.5", extrapolation=True)


def test_weights_requires_every_slot() -> None:
    with pytest.raises(WeightsError, match="missing IN00"):
        Weights(Arch.SD1, {"M00": 0.5})


def test_detect_arch() -> None:
    sd1 = {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    }
    assert detect_arch(sd1) is Arch.SD1
    sd2 = dict(sd1)
    sd2["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = (1024,)
    assert detect_arch(sd2) is Arch.SD2
    xl = {**sd1, "conditioner.embedders.1.model.ln_final.weight": (1280,)}
    assert detect_arch(xl) is Arch.SDXL
    with pytest.raises(ModelMismatchError, match="not a Stable Diffusion checkpoint"):
        detect_arch({"foo": (1,)}, source="x.safetensors")


# --- property tests and fuzzing -------------------------------------------------------------
weight_floats = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(Arch)), st.data())
def test_every_ordering_round_trips(arch: Arch, data: st.DataObject) -> None:
    slots = layout(arch).slots
    values = data.draw(st.lists(weight_floats, min_size=len(slots), max_size=len(slots)))
    w = Weights(arch, dict(zip(slots, values, strict=True)))
    for ordering in (Ordering.NAT, Ordering.RECIPE):
        text = ",".join(format_weight(v) for v in w.to_list(ordering))
        assert parse_weights(text, arch, ordering=ordering) == w
    assert parse_weights(w.to_named_string(), arch) == w
    # a blocks list loses OUT/TIME_EMBED/LABEL_EMB (they follow OUT11/IN00), nothing else
    again = parse_weights(",".join(map(format_weight, w.to_list(Ordering.BLOCKS))), arch)
    assert again.to_list(Ordering.BLOCKS) == w.to_list(Ordering.BLOCKS)


weight_tokens = st.sampled_from(
    (
        *("0.5", "1", "0", "-0", "1e-3", "2.5", "-1", "1e999", "nan", "inf", "", " ", ".", "-"),
        *("IN00:", "in5=", "M00:", "OUT:", "TIME_EMBED:", "BASE:", "label_emb:", "IN99:", "::"),
        *("GRAD_V", "FLAT_25", "x", "e", "1_0", "\u0661.\u0665", "IN\u0661:"),
    )
)
weights_like_text = st.lists(
    st.tuples(weight_tokens, weight_tokens).map("".join), max_size=30
).flatmap(lambda parts: st.sampled_from([",", ", ", " ", "\n", ",,"]).map(lambda s: s.join(parts)))


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(st.text(max_size=120), weights_like_text),
    st.sampled_from(list(Arch)),
    st.sampled_from(list(Ordering)),
    st.booleans(),
)
def test_parse_weights_raises_only_project_errors(
    text: str, arch: Arch, ordering: Ordering, extrapolation: bool
) -> None:
    presets = {"GRAD_V": [i / 24 for i in range(25)], "FLAT_25": [0.25] * 25}
    try:
        w = parse_weights(
            text,
            arch,
            ordering=ordering,
            allow_upstream=True,
            presets=presets,
            extrapolation=extrapolation,
            source="fuzz",
        )
    except AutombwError as exc:
        assert exc.message.startswith(("fuzz", "preset "))  # errors name their source
    else:
        assert w.arch is arch and len(w) == len(layout(arch).slots)
        w.check_range(extrapolation=extrapolation)


def test_named_string_with_spaces_after_colons() -> None:
    w = Weights.uniform(Arch.SD1, 0.5, text_encoder=0.2)
    spaced = w.to_named_string().replace(":", ": ").replace(",", ", ")
    assert parse_weights(spaced) == w
    assert parse_weights(w.to_named_string().replace(",", " ")) == w
    with pytest.raises(WeightsError, match=r"^w: unknown block name 'IN99'"):
        parse_weights("IN99: 0.5", source="w")


@pytest.mark.parametrize("arch", list(Arch))
def test_every_synthetic_unet_key_lands_in_exactly_one_slot(arch: Arch) -> None:
    """Real LDM key names (from the synthetic checkpoints): each UNet key has one slot, every
    slot has keys, nothing outside the UNet is merged, and the arch is detected back."""
    from autombw_cli.sim.checkpoints import key_shapes

    shapes = key_shapes(arch, "full")
    lay = layout(arch)
    per_slot: dict[str, int] = dict.fromkeys(lay.slots, 0)
    for key in shapes:
        slot = lay.slot_of(key)
        if key.startswith("model.diffusion_model."):
            assert slot is not None, key
            assert key.startswith(lay.slot_prefix(slot)), key
            assert sum(key.startswith(lay.slot_prefix(s)) for s in lay.slots) == 1, key
            per_slot[slot] += 1
        else:
            assert slot is None, key
    assert all(n > 0 for n in per_slot.values()), per_slot
    assert detect_arch(shapes) is arch


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from(list(Arch)))
def test_slot_of_never_crashes(suffix: str, arch: Arch) -> None:
    slot = layout(arch).slot_of("model.diffusion_model." + suffix)
    assert slot is None or slot in layout(arch).slots


@pytest.mark.parametrize(
    ("extra", "kwargs", "words"),
    [
        ({"in00": 0.2}, {}, "IN00 given twice (IN00 and in00)"),
        ({"BASE": 0.2}, {"text_encoder": 0.3}, "BASE given twice (text_encoder_weight and BASE)"),
        ({"M00": "0.5"}, {}, "weights.M00 must be a number, not '0.5'"),
        ({"M00": True}, {}, "weights.M00 must be a number, not True"),
        ({}, {"text_encoder": "x"}, "text_encoder_weight must be a number"),
        ({"M00": 10**400}, {"extrapolation": False}, "M00=inf is outside 0..1"),
        ({"OUT05": float("nan")}, {"extrapolation": True}, "OUT05=nan is outside -1..2"),
    ],
)
def test_from_mapping_refuses_what_a_request_can_get_wrong(
    extra: dict[str, object], kwargs: dict[str, object], words: str
) -> None:
    """The bridge parses request weights with this (its 422 messages are these)."""
    mapping = {**dict.fromkeys(layout(Arch.SD1).slots, 0.5), **extra}
    with pytest.raises(WeightsError) as err:
        Weights.from_mapping(Arch.SD1, mapping, **kwargs)  # type: ignore[arg-type]
    assert words in err.value.message


def test_from_mapping_checks_the_range_only_when_asked() -> None:
    mapping = {**dict.fromkeys(layout(Arch.SD1).slots, 0.5), "IN05": 1.5}
    assert Weights.from_mapping(Arch.SD1, mapping)["IN05"] == 1.5
    w = Weights.from_mapping(Arch.SD1, mapping, text_encoder=0, extrapolation=True)
    assert w["IN05"] == 1.5 and w.text_encoder == 0.0
    with pytest.raises(WeightsError, match=r"IN05=1\.5 is outside 0\.\.1"):
        Weights.from_mapping(Arch.SD1, mapping, extrapolation=False)
