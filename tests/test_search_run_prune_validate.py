"""Pruning and top-k validation in full (small) searches: `Run` against simulated WebUIs over
loopback, with resume."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from autombw_cli.app.run import Run
from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.config import load_config
from autombw_cli.payloads import derive_seed
from autombw_cli.recipe import read_recipe_file
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.validation import (
    Validated,
    ValidationLog,
    ValidationRule,
    fresh_prompts,
    winner,
)
from search_helpers import write_search_config

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _execute(run: Run):  # type: ignore[no-untyped-def]
    return asyncio.run(run.execute(lambda e: None, handle_signals=False))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_pruned_evaluations_are_journaled_shown_and_not_run_again(tmp_path: Path) -> None:
    path = write_search_config(
        tmp_path,
        instances="{simulate: 1, latency: 0.0}",
        evaluations=14,
        prompts=3,
        extra_search="  pruning: {after: 1, min_evaluations: 3}",
    )
    result = _execute(Run.create(load_config(path)))
    d = result.run_dir
    rows = _rows(d / "history.csv")
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert len(rows) == 14 and pruned, "the sim's random search prunes some candidates"
    lines = (d / "raw_scores.jsonl").read_text().splitlines()
    raw = {r["number"]: r for r in map(json.loads, lines)}
    for r in pruned:
        assert len(raw[int(r["number"])]["raw_scores"]) == 1  # one image rendered, not three
    complete = [r for r in rows if r["state"] == "complete"]
    assert all(len(raw[int(r["number"])]["raw_scores"]) == 3 for r in complete)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["pruned"] == len(pruned) and summary["evaluations"] == 14
    best = max(complete, key=lambda r: float(r["score"]))
    assert summary["best"]["number"] == int(best["number"])
    assert all(float(r["score"]) < float(best["score"]) for r in pruned)
    # resume further: the pruned rows stay as they are, the new numbers follow
    before = (d / "history.csv").read_text()
    again = _execute(Run.resume(d, max_evaluations=17))
    assert again.done == 17
    after = (d / "history.csv").read_text()
    assert after.startswith(before)
    assert [int(r["number"]) for r in _rows(d / "history.csv")] == list(range(1, 18))


def test_validation_picks_the_winner_on_fresh_seeds_and_resumes(tmp_path: Path) -> None:
    path = write_search_config(
        tmp_path,
        instances="{simulate: 2, latency: 0.0}",
        evaluations=8,
        prompts=2,
        outputs="{run_dir: runs, save_images: best, final_merge: true, "
        "validation: {top: 3, seeds: 2}}",
    )
    result = _execute(Run.create(load_config(path)))
    d = result.run_dir
    summary = json.loads((d / "summary.json").read_text())
    v = summary["validation"]
    top3 = [t["number"] for t in summary["top"][:3]]
    assert [c["number"] for c in v["candidates"]] == top3 and v["complete"]
    assert all(c["images"] == 4 for c in v["candidates"])  # 2 prompts x 2 fresh seed sets
    assert v["search_best"] == summary["best"]["number"]
    best_validated = max(v["candidates"], key=lambda c: c["validated_score"])
    assert v["winner"] == best_validated["number"]
    winner_weights = next(t["weights"] for t in summary["top"] if t["number"] == v["winner"])
    recipe = read_recipe_file(d / "test-merge.recipe.txt")
    assert recipe.weights.to_dict() == pytest.approx(winner_weights)
    assert result.validation is not None and result.validation.winner.number == v["winner"]
    assert result.validation.describe().startswith(f"validated winner: #{v['winner']}, validated")
    rows = _rows(d / "validation.csv")
    assert sorted(int(r["number"]) for r in rows) == sorted(top3)
    # the history is the search's: validation rows never go there
    assert len(_rows(d / "history.csv")) == 8
    # killed during validation: the last row lost, half of another written
    text = (d / "validation.csv").read_text().splitlines(keepends=True)
    kept = text[:-1]
    (d / "validation.csv").write_text("".join(kept) + text[-1][:7])
    again = _execute(Run.resume(d))
    rows2 = _rows(d / "validation.csv")
    assert len(rows2) == 3 and rows2[:2] == rows[:2]  # only the missing one was rendered again
    assert rows2[2]["number"] == rows[2]["number"]
    assert float(rows2[2]["validated_score"]) == pytest.approx(float(rows[2]["validated_score"]))
    assert again.done == 8 and len(_rows(d / "history.csv")) == 8


def test_fresh_prompts_are_derived_from_the_run_seed_and_new() -> None:
    specs = [PromptSpec("p", i, f"prompt {i}", "", 100 + i, {"seed": 100 + i}) for i in range(3)]
    rule = ValidationRule(top=2, seeds=2)
    a = fresh_prompts(specs, rule, derive_seed, 7)
    assert a == fresh_prompts(specs, rule, derive_seed, 7)  # a resumed run repeats them
    assert a != fresh_prompts(specs, rule, derive_seed, 8)
    assert len(a) == 6 and [p.prompt for p in a] == [p.prompt for p in specs] * 2
    seeds = [p.seed for p in a]
    assert len(set(seeds)) == 6 and not set(seeds) & {100, 101, 102}
    assert all(p.body["seed"] == p.seed for p in a)


def test_the_validated_winner_and_an_incomplete_validation() -> None:
    w = Weights(Arch.SD1, dict.fromkeys(layout(Arch.SD1).slots, 0.5))
    top = [Evaluation(number=n, weights=w, score=s) for n, s in ((4, 0.9), (2, 0.8), (7, 0.7))]
    assert winner(top, []) is None
    v = [Validated(4, 0.9, 0.5, 4), Validated(2, 0.8, 0.6, 4)]
    best, complete = winner(top, v)  # type: ignore[misc]
    assert best.number == 2 and not complete
    best, complete = winner(top, [*v, Validated(7, 0.7, 0.55, 4)])  # type: ignore[misc]
    assert best.number == 2 and complete


def test_the_validation_log_drops_a_torn_row_and_appends_on_a_fresh_line(tmp_path: Path) -> None:
    log = ValidationLog(tmp_path)
    log.append(Validated(3, 0.5, 0.4, 4, "gpu0", 1.0))
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write("5,0.4,0.3")  # killed mid-write
    assert [v.number for v in ValidationLog(tmp_path).read()] == [3]
    again = ValidationLog(tmp_path)
    again.append(Validated(5, 0.4, 0.35, 4, "gpu0", 2.0))
    assert [(v.number, v.validated_score) for v in again.read()] == [(3, 0.4), (5, 0.35)]


@pytest.mark.parametrize(
    ("pruning", "expected"),
    [
        ("false", None),
        ("true", (2, 0.95, 5)),
        ("3", (3, 0.95, 5)),
        ("{after: 1, confidence: 0.9, min_evaluations: 4}", (1, 0.9, 4)),
    ],
)
def test_the_pruning_config_reaches_the_rule_and_the_scheduler(
    tmp_path: Path, pruning: str, expected: tuple | None
) -> None:
    from autombw_cli.app.run import pruning_rule, settings_from_config

    cfg = load_config(write_search_config(tmp_path, extra_search=f"  pruning: {pruning}"))
    rule = pruning_rule(cfg)
    got = None if rule is None else (rule.after, rule.confidence, rule.min_evaluations)
    assert got == expected
    assert settings_from_config(cfg).prune_after == (None if expected is None else expected[0])


@pytest.mark.parametrize(
    ("validation", "expected"),
    [("false", None), ("true", (3, 2)), ("2", (2, 2)), ("{top: 5, seeds: 1}", (5, 1))],
)
def test_the_validation_config(tmp_path: Path, validation: str, expected: tuple | None) -> None:
    from autombw_cli.app.validate import validation_rule

    outputs = f"{{run_dir: runs, validation: {validation}}}"
    rule = validation_rule(load_config(write_search_config(tmp_path, outputs=outputs)))
    assert (None if rule is None else (rule.top, rule.seeds)) == expected


@pytest.mark.parametrize(
    ("extra_search", "outputs"),
    [
        ("  pruning: {after: 0}", "{run_dir: runs}"),
        ("  pruning: {confidence: 1.0}", "{run_dir: runs}"),
        ("", "{run_dir: runs, validation: {top: 6}}"),
        ("", "{run_dir: runs, validation: {seeds: 0}}"),
    ],
)
def test_bad_pruning_and_validation_settings_are_config_errors(
    tmp_path: Path, extra_search: str, outputs: str
) -> None:
    from autombw_cli.errors import ConfigError

    path = write_search_config(tmp_path, extra_search=extra_search, outputs=outputs)
    with pytest.raises(ConfigError):
        load_config(path)


def test_a_partial_validation_leaves_the_search_best_as_the_winner() -> None:
    from autombw_cli.app.records import RecordBook
    from autombw_cli.app.validate import report_of

    w = [Weights(Arch.SD1, dict.fromkeys(layout(Arch.SD1).slots, v / 10)) for v in range(3)]
    book = RecordBook(
        Evaluation(number=n, weights=w[n - 1], score=s) for n, s in ((1, 0.9), (2, 0.8), (3, 0.7))
    )
    rule = ValidationRule(top=3, seeds=2)
    partial = [Validated(2, 0.8, 0.6, 4), Validated(3, 0.7, 0.65, 4)]
    report = report_of(rule, book, partial)
    assert report is not None and not report.complete and report.winner.number == 1
    assert report.describe().startswith("validation incomplete (2 of 3 candidates)")
    full = report_of(rule, book, [*partial, Validated(1, 0.9, 0.5, 4)])
    assert full is not None and full.complete and full.winner.number == 3
    assert full.to_dict()["winner"] == 3 and full.to_dict()["search_best"] == 1
    assert "the search's best was #1" in full.describe()
