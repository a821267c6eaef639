"""A run's memory must not grow with its evaluations beyond what the search inherently needs.

The journal (history.csv) is the record of every evaluation; in memory a run keeps the best few
in full (`RecordBook`), 16 bytes of (number, score) per evaluation, and what the optimizer and
the campaign need to propose new points (BENCHMARKS.md "Soak" measures the bytes).
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from pathlib import Path

import pytest

from autombw_cli.app import records as rec
from autombw_cli.app.run import Run
from autombw_cli.blocks import Arch, Weights
from autombw_cli.config import load_config
from autombw_cli.report import summary as sm
from autombw_cli.search import work
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import EvaluationDone
from search_helpers import write_search_config

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(rec.__file__).resolve().parents[1])  # .../src/autombw_cli


def _record(number: int, score: float) -> Evaluation:
    w = Weights.uniform(Arch.SD1, (number % 11) / 10)
    return Evaluation(
        number=number, weights=w, score=score, payload_scores={"p": score}, raw_scores=(score,)
    )


def test_record_book_keeps_the_best_and_a_compact_trace() -> None:
    rng = random.Random(3)
    scores = [round(rng.random(), 2) for _ in range(3000)]  # many ties
    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o) is Evaluation)  # other tests' leftovers
    book = rec.RecordBook(keep=5)
    for i, s in enumerate(scores, start=1):
        book.add(_record(i, s))
    assert len(book) == 3000
    expected = sorted(range(1, 3001), key=lambda n: (-scores[n - 1], n))[:5]
    assert [r.number for r in book.top()] == expected
    assert book.best is not None and book.best.number == expected[0]
    trace = book.trace()
    assert list(trace.numbers) == list(range(1, 3001)) and list(trace.scores) == scores
    gc.collect()
    alive = sum(1 for o in gc.get_objects() if type(o) is Evaluation) - before
    assert alive <= 5, f"{alive} Evaluation objects alive: the book keeps records per evaluation"


def test_summary_from_the_best_and_a_trace_equals_the_full_summary(tmp_path: Path) -> None:
    rng = random.Random(5)
    records = [_record(n, rng.random()) for n in range(1, 200)]
    book = rec.RecordBook(records)
    common = dict(
        name="r",
        run_dir=tmp_path,
        reason="budget",
        exit_code=0,
        budget=199,
        elapsed_s=1.0,
        failed=0,
        instances={},
        model_a="a",
        model_b="b",
        arch=Arch.SD1,
        outputs={},
    )
    full = sm.build_summary(records=records, **common)
    bounded = sm.build_summary(records=book.top(), trace=book.trace(), **common)
    assert bounded == full
    assert full["evaluations"] == 199 and len(full["top"]) == sm.TOP_K


def test_identical_image_guard_remembers_a_window_only() -> None:
    from PIL import Image

    from autombw_cli.search.events import RunWarning

    events: list = []
    guard = work.IdenticalImageGuard(events.append, window=50)
    spec = work.PromptSpec("p", 0, "a boat", "", 1, {})

    def check(n: int, w: float, color: int) -> None:
        img = Image.new("RGB", (4, 4), (color % 256, color // 256, 0))
        cand = work.Candidate(n, Weights.uniform(Arch.SD1, w), 1)
        rendered = work.Rendered(
            work.Job(cand), "x", f"m{n}", [work.RenderedImage(spec, img, b"", 1)], 0, 0, 0, 0
        )
        guard.check(rendered)

    for n in range(1, 501):  # 500 evaluations, all different images
        check(n, (n % 10) / 10, n)
    check(501, 0.95, 500)  # same images as #500 (in the window), other weights: warns
    check(502, 0.95, 1)  # same images as #1, long forgotten: no warning
    warnings = [e.message for e in events if isinstance(e, RunWarning)]
    assert len(warnings) == 1 and "#500 and #501" in warnings[0]


# --- the run's own path: Run + Campaign + optimizer + journal + displays ------------------------
# No WebUI or scheduler here: candidates are taken from the run's campaign and completed with a
# rendered image and a score, as the scheduler does (its memory is covered by the soak).
_PER_EVALUATION = (
    Evaluation,
    sm.BestImage,
    work.Outcome,
    work.RenderedImage,
    work.Candidate,
    EvaluationDone,
)
FIRST, LAST = 100, 400
# Bytes our own modules may keep per evaluation. Inherent: the campaign's history (an
# `Evaluation` with its `Weights`: ~1.5 KB for SD1) and two de-duplication keys (~250 bytes
# each); an `EvaluationDone`, a second record per evaluation, a tuple key or a float per weight per
# evaluation would push it over. Measured ~1.8 KB (random and tpe; BENCHMARKS.md "Soak").
MAX_OWN_BYTES_PER_EVALUATION = 3000


def _own_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(
        s.size for s in snapshot.statistics("filename") if s.traceback[0].filename.startswith(SRC)
    )


@pytest.mark.slow
def test_a_run_keeps_no_per_evaluation_objects(tmp_path: Path) -> None:
    import io
    import os

    from PIL import Image

    from autombw_cli.report.progress import JsonLog, PlainPrinter
    from autombw_cli.search.events import fan_out

    cfg = load_config(
        write_search_config(
            tmp_path,
            instances="[{url: 'http://127.0.0.1:9', label: gpu}]",
            evaluations=LAST,
            passes="[{optimizer: random}]",
            outputs="{run_dir: runs, save_images: best, final_merge: false}",
        )
    )
    run = Run.create(cfg)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    image = Image.new("RGB", (8, 8))
    spec = run.prompts[0]
    marks: list[tuple[dict[str, int], int]] = []

    def measure() -> None:
        gc.collect()
        counts = {t.__name__: 0 for t in _PER_EVALUATION}
        for o in gc.get_objects():
            if type(o) in _PER_EVALUATION:
                counts[type(o).__name__] += 1
        marks.append((counts, _own_bytes(tracemalloc.take_snapshot())))

    with open(os.devnull, "w") as devnull:
        json_log = JsonLog(tmp_path / "events.jsonl")
        emit = fan_out([PlainPrinter(devnull), json_log])
        tracemalloc.start(1)
        try:
            campaign = run._campaign(emit)
            for _ in range(LAST):
                cand = campaign.next_candidate()
                assert cand is not None
                score = -sum((v - 0.3) ** 2 for v in cand.weights.values.values())
                images = (work.RenderedImage(spec, image, buf.getvalue(), 1),)
                campaign.complete(
                    work.Outcome(cand, "gpu", "m", images, (score,), 0, 0, 0, 0, 0, 0, 1)
                )
                del cand, images
                if campaign.done in (FIRST, LAST):
                    measure()
        finally:
            tracemalloc.stop()
            json_log.close()
    assert len(run.records) == LAST and campaign.done == LAST
    (first, own_first), (last, own_last) = marks
    for name, n in last.items():
        # the campaign's history keeps one `Evaluation` per evaluation (the book, 5 more)
        allowed = LAST - FIRST + 2 if name == Evaluation.__name__ else 2
        assert n - first[name] <= allowed, f"{name}: {first[name]} at #{FIRST}, {n} at #{LAST}"
    per_eval = (own_last - own_first) / (LAST - FIRST)
    assert per_eval < MAX_OWN_BYTES_PER_EVALUATION, f"{per_eval:.0f} bytes per evaluation"
