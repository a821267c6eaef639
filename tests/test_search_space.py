"""SearchSpace: parameters, frozen slots, clamps, groups, grid/continuous, extrapolation."""

from __future__ import annotations

import numpy as np
import pytest

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.errors import ConfigError
from autombw_cli.search.space import SearchSpace


def test_default_space_is_27_blocks_on_an_11_value_grid() -> None:
    space = SearchSpace.build(Arch.SD1)
    assert space.dimensions == 27
    assert space.names == layout(Arch.SD1).slots
    assert list(space.grid("IN00")) == [round(k / 10, 9) for k in range(11)]
    assert space.size() == 11.0**27


def test_frozen_clamped_and_grouped_slots_map_to_weights() -> None:
    space = SearchSpace.build(
        "sd1",
        frozen={"TIME_EMBED": 0.25, "OUT": 1.0},
        clamps={"M00": (0.2, 0.5)},
        groups=[["IN00", "IN01", "IN02"]],
    )
    assert "IN00+IN01+IN02" in space.names
    assert "TIME_EMBED" not in space.names
    assert list(space.grid("M00")) == [0.2, 0.3, 0.4, 0.5]
    params = {n: 0.7 for n in space.names}
    params["IN00+IN01+IN02"] = 0.3
    params["M00"] = 0.9  # outside the clamp: clipped
    w = space.to_weights(params)
    assert (w["IN00"], w["IN01"], w["IN02"]) == (0.3, 0.3, 0.3)
    assert w["M00"] == 0.5
    assert w["TIME_EMBED"] == 0.25 and w["OUT"] == 1.0
    assert space.contains(w)
    assert space.to_params(w)["IN00+IN01+IN02"] == 0.3


def test_contains_rejects_points_off_the_space() -> None:
    space = SearchSpace.build("sd1", frozen={"OUT": 0.0}, groups=[["IN00", "IN01"]])
    base = Weights.uniform(Arch.SD1, 0.5).replace({"OUT": 0.0})
    assert space.contains(base)
    assert not space.contains(base.replace({"OUT": 0.1}))  # frozen slot differs
    assert not space.contains(base.replace({"IN00": 0.4}))  # group members differ
    assert not space.contains(base.replace({"M00": 0.55}))  # off the grid
    assert not space.contains(Weights.uniform(Arch.SDXL, 0.5))


def test_project_snaps_clips_and_averages_groups() -> None:
    space = SearchSpace.build("sd1", clamps={"M00": (0.0, 0.3)}, groups=[["OUT00", "OUT01"]])
    w = Weights.uniform(Arch.SD1, 0.52).replace({"M00": 0.9, "OUT00": 0.2, "OUT01": 0.6})
    p = space.project(w)
    assert p["IN00"] == 0.5 and p["M00"] == 0.3
    assert p["OUT00"] == p["OUT01"] == 0.4
    assert space.contains(p)


def test_extrapolation_and_continuous() -> None:
    wide = SearchSpace.build("sd1", extrapolation=True, intervals=10)
    assert wide.grid("IN00")[0] == -1.0 and wide.grid("IN00")[-1] == 2.0
    assert wide.grid("IN00").size == 31
    cont = SearchSpace.build("sd1", intervals=None)
    assert not cont.is_grid
    w = cont.sample(np.random.default_rng(0))
    assert cont.contains(w)
    assert len({round(v, 6) for v in w.values.values()}) > 20  # not on a grid


def test_sample_stays_in_bounds_and_sdxl_works() -> None:
    space = SearchSpace.build("sdxl", clamps={"LABEL_EMB": (0.4, 0.6)})
    rng = np.random.default_rng(1)
    for _ in range(50):
        w = space.sample(rng)
        assert 0.4 <= w["LABEL_EMB"] <= 0.6
        assert space.contains(w)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clamps": {"IN00": (0.31, 0.39)}}, "holds no grid value"),
        ({"groups": [["IN00", "IN01"], ["IN01", "IN02"]]}, "two groups"),
        ({"frozen": {"IN99": 0.1}}, "unknown block"),
        ({"clamps": {"IN00": (0.5, 1.5)}}, "leaves the range"),
        ({"frozen": {s: 0.5 for s in layout(Arch.SD1).slots}}, "no block left"),
        ({"searched": ["IN00"]}, "neither searched nor frozen"),
    ],
)
def test_bad_spaces_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.build("sd1", **kwargs)


def test_unsearched_slots_take_the_base_weights() -> None:
    base = Weights.uniform(Arch.SD1, 0.3)
    space = SearchSpace.build("sd1", searched=["M00"], base=base)
    assert space.names == ("M00",)
    w = space.to_weights({"M00": 1.0})
    assert w["IN00"] == 0.3 and w["M00"] == 1.0
