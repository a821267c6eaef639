"""An ensemble's z-score statistics (mean/std frozen after ``zscore_warmup`` images) survive
``--resume``: the journal keeps every member's raw scores, and a resumed run replays them, so it
normalises on the same scale as an uninterrupted run instead of starting a new warm-up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from autombw_cli.blocks import Arch, Weights
from autombw_cli.scoring.ensemble import EnsembleScorer, Member, RunningStats
from autombw_cli.scoring.settings import Normalization
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.journal import Journal
from search_helpers import write_search_config


class _PromptScorer:
    """Deterministic: the score of an image is the number its prompt spells."""

    def __init__(self, name: str) -> None:
        self.name = name

    def score(self, images: Sequence[object], prompts: Sequence[str]) -> list[float]:
        return [float(p) for p in prompts]


def _ensemble(warmup: int) -> EnsembleScorer:
    return EnsembleScorer(
        [
            Member(_PromptScorer("a"), 1.0, Normalization.ZSCORE),
            Member(_PromptScorer("b"), 0.5, Normalization.RAW),
        ],
        zscore_warmup=warmup,
    )


BATCHES = [["3", "-1"], ["4"], ["1.5", "9", "2"], ["-7"], ["0.25", "6"]]


def test_replayed_member_scores_give_the_stats_continuous_scoring_gave() -> None:
    whole = _ensemble(warmup=5)
    journal = []
    for batch in BATCHES:
        _, raw = whole.score_members([None] * len(batch), batch)
        journal.append(raw)
    resumed = _ensemble(warmup=5)
    assert resumed.restore_stats(journal[:3]) == 3  # "killed" after three evaluations
    for batch in BATCHES[3:]:
        resumed.score_members([None] * len(batch), batch)
    a_whole, a_resumed = whole.members[0].stats, resumed.members[0].stats
    assert a_whole is not None and a_resumed is not None
    assert (a_resumed.count, a_resumed.mean, a_resumed.std) == (
        a_whole.count,
        a_whole.mean,
        a_whole.std,
    )
    assert resumed.score([None], ["5"]) == whole.score([None], ["5"])


def test_without_replay_a_resumed_ensemble_would_start_a_new_warmup() -> None:
    whole, fresh = _ensemble(warmup=3), _ensemble(warmup=3)
    for batch in BATCHES:
        whole.score_members([None] * len(batch), batch)
    assert fresh.score([None], ["5"]) != whole.score([None], ["5"])


def test_restore_ignores_unknown_labels_and_raw_members() -> None:
    ens = _ensemble(warmup=4)
    ens.restore_stats([{"a": [1.0, 3.0], "b": [100.0], "gone": [7.0]}])
    stats = ens.members[0].stats
    assert stats is not None and stats.count == 2 and stats.mean == 2.0
    assert ens.members[1].stats is None


def test_journal_keeps_member_scores_and_gives_them_in_scoring_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path, Arch.SD1)
    w = Weights.uniform(Arch.SD1, 0.5)
    # recorded out of scoring order (e.g. told in number order): finish times decide
    journal.append(
        Evaluation(number=2, weights=w, score=1.0, timestamp=1000.002, member_scores={"a": [2.0]})
    )
    journal.append(
        Evaluation(number=1, weights=w, score=1.0, timestamp=1000.001, member_scores={"a": [1.0]})
    )
    journal.append(Evaluation(number=3, weights=w, score=1.0, timestamp=1000.003))  # no ensemble
    again = Journal(tmp_path, Arch.SD1)
    assert again.member_scores_in_order() == [{"a": (1.0,)}, {"a": (2.0,)}]
    assert again.read()[0].member_scores == {"a": (2.0,)}


# --- a whole search, stopped and resumed, against an uninterrupted one ---------------------
WARMUP = 3
ENSEMBLE = (
    "scorer: {name: ensemble, device: cpu, tally: arithmetic, sigmoid: false, "
    f"zscore_warmup: {WARMUP}, ensemble: [{{name: sim, normalize: zscore}}, "
    "{name: sim, weight: 0.5, normalize: raw}]}"
)


def _config(folder: Path) -> Path:
    folder.mkdir()
    cfg = write_search_config(
        folder,
        instances="{simulate: 1, latency: 0.0}",
        evaluations=8,
        outputs="{run_dir: runs, save_images: none, final_merge: false}",
    )
    text = cfg.read_text()
    old = "scorer: {name: sim, device: cpu, tally: arithmetic, sigmoid: false}"
    assert old in text
    cfg.write_text(text.replace(old, ENSEMBLE))
    return cfg


def _search(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from autombw_cli.cli import main

    try:
        main(["search", "--plain", *args])
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr()
    capsys.readouterr()


def _frozen_stats(run_dir: Path) -> RunningStats:
    stats = RunningStats(WARMUP)
    for entry in Journal(run_dir, Arch.SD1).member_scores_in_order():
        stats.update(entry["sim"])
    assert stats.count == WARMUP
    return stats


def _check_scores_use(run_dir: Path, stats: RunningStats) -> int:
    """Every evaluation scored after the warm-up is (sim - mean)/std + 0.5 * sim#2."""
    checked = 0
    for e in sorted(Journal(run_dir, Arch.SD1).read(), key=lambda e: e.timestamp)[WARMUP:]:
        (raw,), (raw2,) = e.member_scores["sim"], e.member_scores["sim#2"]
        assert e.score == pytest.approx((raw - stats.mean) / stats.std + 0.5 * raw2, abs=1e-9)
        checked += 1
    return checked


@pytest.mark.slow
def test_a_stopped_and_resumed_zscore_search_scores_like_an_uninterrupted_one(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    whole_cfg = _config(tmp_path / "whole")
    _search([str(whole_cfg)], capsys)
    (whole_run,) = (tmp_path / "whole" / "runs").iterdir()

    cfg = _config(tmp_path / "split")
    _search(["--max-evaluations", "4", str(cfg)], capsys)  # stops after 4 of 8
    (run_dir,) = (tmp_path / "split" / "runs").iterdir()
    assert len(Journal(run_dir, Arch.SD1).read()) == 4
    _search(["--resume", str(run_dir)], capsys)
    assert len(Journal(run_dir, Arch.SD1).read()) == 8

    stats, whole_stats = _frozen_stats(run_dir), _frozen_stats(whole_run)
    assert (stats.mean, stats.std) == (whole_stats.mean, whole_stats.std)  # same first images
    assert _check_scores_use(whole_run, whole_stats) == 8 - WARMUP
    assert _check_scores_use(run_dir, stats) == 8 - WARMUP  # 4 of them after the resume
