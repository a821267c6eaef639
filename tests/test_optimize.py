"""`autombw_cli.optimize`: the search core as a Python function (app/optimize.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import pytest

import autombw_cli
from autombw_cli.app.optimize import resolve_search
from autombw_cli.app.run import Run
from autombw_cli.blocks import Arch, Weights
from autombw_cli.config import load_config
from autombw_cli.errors import AutombwError
from autombw_cli.search.events import StopReason, null_sink
from autombw_cli.search.journal import read_warm_start
from autombw_cli.testing.landscapes import coupled, skip_pairs
from search_helpers import write_search_config

# a small space keeps the default's GP asks quick (its passes are the same in any space)
FOUR_BLOCKS = {"blocks": ["IN00", "IN05", "M00", "OUT06"], "initial": {"weights": "0.5"}}


def test_it_is_the_package_entry_point() -> None:
    from autombw_cli.app.optimize import optimize

    assert autombw_cli.optimize is optimize
    with pytest.raises(AttributeError):
        autombw_cli.no_such_thing  # noqa: B018


@pytest.mark.parametrize(
    ("search", "where"),
    [
        ({"passes": [{"optimizer": "cmaess"}]}, "search.passes[0].optimizer: unknown optimizer"),
        ({"max_evaluations": 0}, "search.max_evaluations: "),
        ({"blocks": ["IN00", "IN99"]}, "search.blocks[1]: unknown block name 'IN99'"),
        ({"early_stoping": 5}, "search.early_stoping: unknown key 'early_stoping'; did you"),
        ({"passes": [{"optimizer": "tpe", "settings": {"gamma": 1}}]}, "search.passes[0]"),
        ({"clamps": {"IN00": [0.8, 0.2]}}, "search.clamps.IN00: min 0.8 is above max 0.2"),
    ],
)
def test_an_invalid_search_is_an_autombw_error_naming_the_field(search, where) -> None:
    with pytest.raises(AutombwError) as err:
        autombw_cli.optimize(lambda w: 0.0, search=search)
    assert where in err.value.message


def test_an_unknown_arch_is_an_autombw_error() -> None:
    with pytest.raises(AutombwError, match="unknown arch 'sd9'"):
        autombw_cli.optimize(lambda w: 0.0, arch="sd9")


def test_the_defaults_are_the_clis(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"prompt": "x"}')
    (tmp_path / "c.yaml").write_text(
        "models: {a: A.safetensors, b: B.safetensors, output: out}\n"
        "instances: {simulate: 1}\npayloads: {files: [p.json]}\n"
    )
    cli = load_config(tmp_path / "c.yaml").search
    mine, arch, initial = resolve_search(None, "sd1")
    assert mine.model_dump() == cli.model_dump()
    assert (arch, initial) == (Arch.SD1, None)


def test_a_search_uses_its_budget_and_returns_the_evaluations_in_order() -> None:
    land = coupled(0)
    result = autombw_cli.optimize(land, search={"max_evaluations": 30})
    assert [e.number for e in result.evaluations] == list(range(1, 31))
    assert all(e.score == land(e.weights) for e in result.evaluations)
    assert len({e.weights.key() for e in result.evaluations}) == 30
    assert result.best is not None
    assert result.best.score == max(e.score for e in result.evaluations)
    assert result.stop_reason is StopReason.BUDGET


def test_the_search_section_shapes_the_search() -> None:
    search = {
        "blocks": ["IN00", "IN01", "M00"],
        "frozen": {"OUT": 0.5},
        "clamps": {"IN00": [0.2, 0.4]},
        "passes": [{"optimizer": "random", "max_evaluations": 4}, {"optimizer": "tpe"}],
        "initial": {"weights": "0.3"},
        "max_evaluations": 10,
    }
    seen: list[Weights] = []
    result = autombw_cli.optimize(lambda w: seen.append(w) or 1.0 - w["M00"], search=search)
    assert [e.pass_index for e in result.evaluations] == [1] * 4 + [2] * 6
    assert seen[0]["M00"] == 0.3  # the initial weights come first
    for w in seen:
        assert w["OUT"] == 0.5 and w["OUT05"] == 0.3  # frozen / from the initial weights
        assert 0.2 <= w["IN00"] <= 0.4


def test_a_failed_evaluation_is_kept_uses_no_budget_and_gives_its_number_on() -> None:
    calls = itertools.count(1)
    land = coupled(1)
    result = autombw_cli.optimize(
        lambda w: None if next(calls) in (2, 3) else land(w), search={"max_evaluations": 6}
    )
    failed = [e for e in result.evaluations if not e.ok]
    assert [(e.number, e.score) for e in failed] == [(2, None), (2, None)]
    ok = [e for e in result.evaluations if e.ok]
    assert [e.number for e in ok] == [1, 2, 3, 4, 5, 6]
    assert result.best is not None and result.best.score == max(e.score for e in ok)


def test_a_seeded_search_repeats_and_the_seed_matters() -> None:
    def run(seed: int, workers: int) -> list[tuple[bytes, float | None]]:
        land = coupled(2)
        result = autombw_cli.optimize(
            land, search={**FOUR_BLOCKS, "max_evaluations": 20}, seed=seed, workers=workers
        )
        return [(e.weights.key(), e.score) for e in result.evaluations]

    assert run(3, 1) == run(3, 1)
    assert run(3, 4) == run(3, 4)
    assert run(3, 1) != run(4, 1)
    # the seed argument is search.seed
    land = coupled(2)
    search = {**FOUR_BLOCKS, "max_evaluations": 20, "seed": 3}
    via_section = autombw_cli.optimize(land, search=search)
    assert [(e.weights.key(), e.score) for e in via_section.evaluations] == run(3, 1)


def test_the_default_runs_gp_then_the_portfolio_to_its_budget_and_resumes_exactly() -> None:
    """The default: Optuna's gp for 100 evaluations, then gp and GFO's Bayesian taking turns to
    the budget (no early stop); a search continued from any point, in either pass, repeats the
    uninterrupted one."""
    land = skip_pairs(2)
    search = {**FOUR_BLOCKS, "max_evaluations": 110}
    full = autombw_cli.optimize(land, search=search, seed=2)
    assert [e.pass_index for e in full.evaluations] == [1] * 100 + [2] * 10
    assert full.stop_reasons == ["pass 1: pass budget", "pass 2: evaluation budget"]
    assert len({e.weights.key() for e in full.evaluations}) == 110
    for k in (95, 100, 104):
        resumed = autombw_cli.optimize(land, search=search, seed=2, history=full.evaluations[:k])
        assert [(e.weights.key(), e.pass_index) for e in resumed.evaluations] == [
            (e.weights.key(), e.pass_index) for e in full.evaluations
        ]


def test_it_proposes_what_autombw_search_proposes(tmp_path: Path) -> None:
    """The same search section and seed: ``autombw search`` against one simulated WebUI and
    optimize() told the journal's scores propose the same weights in the same order. (Without
    the scheduler's prefetch, which asks for the next candidate while one renders, so the
    optimizer hears each result one candidate later; optimize() with one worker does not.)"""
    cfg = load_config(
        write_search_config(
            tmp_path, instances="{simulate: 1, latency: 0}", evaluations=8, passes="[{}]"
        )
    )
    run = Run.create(cfg)
    run.scheduler_settings = dataclasses.replace(run.scheduler_settings, prefetch=False)
    result = asyncio.run(run.execute(null_sink, handle_signals=False))
    journal = list(read_warm_start(result.run_dir / "history.csv", "sd1"))
    assert len(journal) == 8
    scores = {w.key(): s for w, s in journal}
    search = {
        "frozen": {"TIME_EMBED": 0.0},
        "passes": [{}],
        "early_stopping": False,
        "max_evaluations": 8,
    }
    mine = autombw_cli.optimize(lambda w: scores[w.key()], search=search, seed=0)
    assert [e.weights.key() for e in mine.evaluations] == [w.key() for w, _ in journal]
