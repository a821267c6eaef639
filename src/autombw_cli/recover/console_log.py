"""auto-MBW-rt console logs: ``testweights``/``test score`` pairs and Hyperactive's Results."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from autombw_cli.blocks import Arch, Ordering, Weights, layout
from autombw_cli.errors import AutombwError
from autombw_cli.recover.text import physical_lines
from autombw_cli.recover.values import (
    RecoveredSource,
    SourceKind,
    no_evaluations,
)
from autombw_cli.search.evaluation import Evaluation

_LOG_TOKEN = r"[^\s,\[\]|]+"
# values separated by commas (spaces around them allowed), optionally in [brackets]
_TESTWEIGHTS = re.compile(
    rf"testweights:[ \t]*\[?[ \t]*(?P<values>(?:{_LOG_TOKEN}(?:[ \t]*,[ \t]*{_LOG_TOKEN})*)?)"
)
_TESTSCORE = re.compile(r"test score:[ \t]*(?P<score>[^\s\[|]*)")
_BEST_SCORE = re.compile(r"Best score:[ \t]*(?P<score>[^\s\[|]*)")
_BEST_SET = re.compile(r"Best parameter set:")
_PROGRESS = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")  # tqdm: "35%|", "95/270 [", "it/s]"
_PARAM = re.compile(r"\s*'(?P<key>\d+)'\s*:\s*(?P<value>\S+)\s*")


def _log_number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@dataclass
class _LogReader:
    source: str
    arch: Arch | None
    evaluations: list[Evaluation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: tuple[int, Weights] | None = None
    best_score: tuple[int, float] | None = None
    params: dict[int, float] | None = None
    params_line: int = 0
    results: list[Evaluation] = field(default_factory=list)

    def warn(self, lineno: int, message: str) -> None:
        self.warnings.append(f"{self.source}: line {lineno}: {message}")

    def weights_from_nat(self, values: list[float], lineno: int, what: str) -> Weights | None:
        counts = (
            (len(layout(self.arch).slots),)
            if self.arch is not None
            else (len(layout(Arch.SD1).slots), len(layout(Arch.SDXL).slots))
        )
        if len(values) not in counts:
            expected = " or ".join(str(c) for c in counts)
            self.warn(lineno, f"{what} has {len(values)} values, expected {expected}; skipped")
            return None
        arch = self.arch or (Arch.SD1 if len(values) == counts[0] else Arch.SDXL)
        try:
            return Weights.from_list(arch, values, Ordering.NAT)
        except AutombwError as exc:  # pragma: no cover - counts are checked above
            self.warn(lineno, f"{what}: {exc.message}; skipped")
            return None

    def segment(self, lineno: int, text: str) -> None:
        if self.params is not None:
            m = _PARAM.fullmatch(text)
            if m:
                value = _log_number(m.group("value"))
                key = int(m.group("key"))
                if value is None:
                    self.warn(lineno, f"parameter '{key}' is {m.group('value')!r}, not a number")
                elif key in self.params:
                    self.warn(lineno, f"parameter '{key}' is given twice")
                else:
                    self.params[key] = value
                return
            if not text.strip() or _PROGRESS.search(text):
                return  # a blank or a progress-bar redraw inside the block
            self.finish_params()
        # weights and scores in the order they appear: an interleaved line can hold the end of
        # one evaluation (its score) and the start of the next (its weights)
        found = [*_TESTWEIGHTS.finditer(text), *_TESTSCORE.finditer(text)]
        for m in sorted(found, key=lambda m: m.start()):
            if m.re is _TESTWEIGHTS:
                self.weights_event(lineno, m.group("values"))
            else:
                self.score_event(lineno, m.group("score"))
        m = _BEST_SCORE.search(text)
        if m:
            score = _log_number(m.group("score"))
            if score is None:
                self.warn(lineno, f"Best score {m.group('score')[:40]!r} is not a finite number")
            self.best_score = (lineno, score) if score is not None else None
        if _BEST_SET.search(text):
            self.params = {}
            self.params_line = lineno

    def weights_event(self, lineno: int, raw: str) -> None:
        if self.pending is not None:
            self.warn(self.pending[0], "testweights without a test score after it; skipped")
            self.pending = None
        values = [_log_number(p.strip()) for p in raw.split(",")]
        if not raw or any(v is None for v in values):
            self.warn(lineno, f"testweights {raw[:60]!r} is not a list of numbers; skipped")
            return
        numbers = [v for v in values if v is not None]
        weights = self.weights_from_nat(numbers, lineno, "testweights")
        if weights is not None:
            self.pending = (lineno, weights)

    def score_event(self, lineno: int, raw: str) -> None:
        if self.pending is None:
            self.warn(lineno, "test score without testweights before it; ignored")
            return
        start, weights = self.pending
        self.pending = None
        score = _log_number(raw)
        if score is None:
            self.warn(lineno, f"test score {raw[:40]!r} is not a finite number")
            return
        where = f"line {start} (testweights) + line {lineno} (test score)"
        self.evaluations.append(
            Evaluation(weights=weights, score=score, line=start, location=where)
        )

    def finish_params(self) -> None:
        params, lineno = self.params, self.params_line
        self.params = None
        if params is None:
            return
        n = len(params)
        if sorted(params) != list(range(n)):
            self.warn(lineno, f"Best parameter set has keys {sorted(params)}, not 0..n-1; skipped")
            return
        if self.best_score is None:
            self.warn(lineno, "Best parameter set without a Best score before it; skipped")
            return
        score_line, score = self.best_score
        self.best_score = None
        values = [params[i] for i in range(n)]
        weights = self.weights_from_nat(values, lineno, "Best parameter set (truncated?)")
        if weights is None:
            return
        where = f"line {score_line} (Best score) + line {lineno} (Best parameter set)"
        self.results.append(
            Evaluation(weights=weights, score=score, line=score_line, location=where)
        )

    def finish(self) -> RecoveredSource:
        self.finish_params()
        if self.pending is not None:
            self.warn(self.pending[0], "testweights without a test score (log ends); skipped")
            self.pending = None
        seen = {(e.weights.key(), e.score) for e in self.evaluations}
        merged = list(self.evaluations)
        for r in self.results:
            if (r.weights.key(), r.score) not in seen:
                merged.append(r)
                seen.add((r.weights.key(), r.score))
        merged.sort(key=lambda e: e.line)
        if not merged:
            raise no_evaluations(
                self.source,
                "expected 'testweights: <27 values>' followed by 'test score: <number>', or a "
                "'Best score:' + 'Best parameter set:' block",
                self.warnings,
            )
        return RecoveredSource(self.source, SourceKind.LOG, tuple(merged), tuple(self.warnings))


def parse_console_log(
    text: str, *, source: str = "console log", arch: Arch | None = None
) -> RecoveredSource:
    """Every evaluation an auto-MBW-rt console log records (see the module docstring)."""
    reader = _LogReader(source, arch)
    for lineno, line in enumerate(physical_lines(text), start=1):
        for segment in line.split("\r"):
            reader.segment(lineno, segment)
    return reader.finish()
