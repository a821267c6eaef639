"""Fuzzing the recover parsers: any input gives a result or an AutombwError, never a crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autombw_cli.blocks import Arch, layout
from autombw_cli.errors import AutombwError
from autombw_cli.recover import (
    SourceKind,
    detect_kind,
    parse_console_log,
    parse_history_csv,
    parse_mbwrt_csv,
    parse_source,
    recover,
)
from conftest import FIXTURES

MBWRT = FIXTURES / "auto-mbw-rt"
REAL_LOG = (MBWRT / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt").read_text("utf-8")
REAL_CSV = (MBWRT / "history-15b-AstolfoMix-08b09b.csv").read_text("utf-8")

numbers = st.sampled_from(["0.5", "1.0", "0", "0.30000000000000004", "-0.1", "nan", "", "x", "1e9"])
nat_lists = st.lists(numbers, min_size=0, max_size=30).map(",".join)
log_lines = st.one_of(
    nat_lists.map(lambda v: f"2023-11-21 01:27:27,668 - AutoMBWrt - INFO - testweights: {v}"),
    numbers.map(lambda v: f"2023-11-21 02:02:40,953 - AutoMBWrt - INFO - test score: {v}"),
    numbers.map(lambda v: f"   Best score: {v}  "),
    st.just("   Best parameter set:"),
    st.tuples(st.integers(-1, 30), numbers).map(lambda kv: f"      '{kv[0]}'  : {kv[1]}  "),
    st.just("[0] hyper_score (Bayesian Optimization):  35%| | 95/270 [48:30<89:21, best"),
    st.just("Results: 'hyper_score'"),
    st.text(max_size=40),
)
separators = st.sampled_from(["\n", "\r\n", "\r", "\r\r\n", ""])


@st.composite
def logs(draw: st.DrawFn) -> str:
    lines = draw(st.lists(log_lines, max_size=40))
    sep = draw(st.lists(separators, min_size=len(lines), max_size=len(lines)))
    return "".join(line + s for line, s in zip(lines, sep, strict=True))


@st.composite
def cut_fixture(draw: st.DrawFn, text: str) -> str:
    """A real file, truncated and with a slice of junk spliced in."""
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    junk = draw(st.text(max_size=30))
    return text[:start] + junk + text[end : end + draw(st.integers(0, len(text)))]


def check(parse: object, text: str) -> None:
    try:
        result = parse(text, source="fuzz")  # type: ignore[operator]
    except AutombwError as exc:
        assert exc.message.startswith("fuzz")  # errors name the source
        event(f"error: {exc.message.split(':', 2)[-1][:30]}")
    else:
        event("parsed")
        assert result.evaluations
        best = result.best()
        assert all(
            e.score is None or best.score is None or e.score <= best.score
            for e in result.evaluations
        )


@settings(max_examples=400, deadline=None)
@given(st.one_of(logs(), cut_fixture(REAL_LOG), st.text(max_size=300)))
def test_console_log_parser(text: str) -> None:
    check(parse_console_log, text)


csv_cells = st.one_of(numbers, st.text(max_size=6))


@st.composite
def mbwrt_csvs(draw: st.DrawFn) -> str:
    width = draw(st.sampled_from([22, 27, 25, 30]))
    header = [str(i) for i in range(width)] + draw(
        st.sampled_from([["score", "eval_times", "iter_times"], ["score"], []])
    )
    rows = draw(st.lists(st.lists(csv_cells, min_size=0, max_size=len(header) + 2), max_size=6))
    sep = draw(separators)
    return sep.join([",".join(header), *(",".join(r) for r in rows)]) + draw(separators)


HISTORY_EXTRA = ("score", "state", "number", "arch", "BASE", "worker", "in_5", "IN99", "IN00")


@st.composite
def history_csvs(draw: st.DrawFn) -> str:
    slots = list(layout(draw(st.sampled_from([Arch.SD1, Arch.SDXL]))).slots)
    columns = draw(st.permutations([*slots, "score"]))
    if draw(st.booleans()) and columns:
        columns.pop(draw(st.integers(0, len(columns) - 1)))  # a missing column
    columns += draw(st.lists(st.sampled_from(HISTORY_EXTRA), max_size=3))
    good_cell = st.sampled_from(["0.5", "0", "1.0", "0.30000000000000004"])
    bad_cell = st.one_of(csv_cells, st.sampled_from(["complete", "failed", "sd1", "sdxl", "sd9"]))
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        row = [draw(good_cell) for _ in columns]
        for _ in range(draw(st.integers(0, 2))):
            if row:
                row[draw(st.integers(0, len(row) - 1))] = draw(bad_cell)
        if draw(st.integers(0, 9)) == 0:
            row = row[: draw(st.integers(0, len(row)))]
        rows.append(row)
    body = "\n".join([",".join(columns), *(",".join(r) for r in rows)])
    return body + draw(st.sampled_from(["", "\n", "\r\n"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(mbwrt_csvs(), cut_fixture(REAL_CSV)))
def test_mbwrt_csv_parser(text: str) -> None:
    check(parse_mbwrt_csv, text)


@settings(max_examples=300, deadline=None)
@given(history_csvs())
def test_history_csv_parser(text: str) -> None:
    check(parse_history_csv, text)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.text(max_size=200), logs(), mbwrt_csvs(), history_csvs()),
    st.sampled_from([None, *SourceKind]),
    st.sampled_from([None, *Arch]),
)
def test_detect_and_parse_any_text(text: str, kind: SourceKind | None, arch: Arch | None) -> None:
    try:
        chosen = kind or detect_kind(text, source="fuzz")
        parse_source(text, chosen, source="fuzz", arch=arch)
    except AutombwError as exc:
        assert exc.message.startswith("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([None, *SourceKind]))
def test_recover_any_bytes(data: bytes, kind: SourceKind | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "source.txt"
        path.write_bytes(data)
        try:
            recover(path, kind=kind)
        except AutombwError as exc:
            assert str(path) in exc.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 400), st.binary(max_size=300), st.sampled_from([None, SourceKind.CHECKPOINT]))
def test_recover_safetensors_like_headers(size: int, body: bytes, kind: SourceKind | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(size.to_bytes(8, "little") + b"{" + body)
        try:
            recover(path, kind=kind)
        except AutombwError as exc:
            assert str(path) in exc.message
