"""Reading weights back from auto-MBW-rt CSVs/logs, our history CSV and recipes (issue 2 §5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autombw_cli.blocks import Arch, Ordering, Weights, format_weight
from autombw_cli.errors import JournalError, OutputExistsError, WeightsError
from autombw_cli.recipe import Recipe, read_recipe_file
from autombw_cli.recover import (
    SourceKind,
    detect_kind,
    order_line,
    parse_console_log,
    parse_history_csv,
    parse_mbwrt_csv,
    recipe_for,
    recipe_stem,
    recover,
    write_recovered_recipe,
)
from conftest import FIXTURES

MBWRT = FIXTURES / "auto-mbw-rt"
CSV = MBWRT / "history-15b-AstolfoMix-08b09b.csv"
RECIPE_WITH_LOG = MBWRT / "15b-AstolfoMix-08b09b.recipe-with-console-log.txt"
LOG_1105 = MBWRT / "console-log-2023-11-05.txt"
SD1_HEADER = ",".join(str(i) for i in range(27)) + ",score,eval_times,iter_times"


def stored_recipe_line() -> str:
    """The 27-number line exactly as runtime-block-merge saved it in the fixture."""
    lines = RECIPE_WITH_LOG.read_text(encoding="utf-8").splitlines()
    assert lines[5].count(",") == 26
    return lines[5]


def nat_row(values: list[float], score: float) -> str:
    return ",".join(format_weight(v) for v in values) + f",{score!r},1.0,2.0"


# --- the fixtures (the acceptance criteria) ------------------------------------------------
def test_fixture_csv_best_row_gives_the_stored_recipe_line() -> None:
    result = recover(CSV)
    assert result.kind is SourceKind.MBWRT_CSV
    assert len(result.evaluations) == 96
    best = result.best()
    assert best.score == 0.6132534303822829
    assert best.location == "row 89 (line 90)"
    assert order_line(best.weights, Ordering.RECIPE) == stored_recipe_line()


def test_fixture_console_log_best_set_gives_the_stored_recipe_line() -> None:
    # the file is a recipe with a console log pasted below; --kind log reads the log part
    assert recover(RECIPE_WITH_LOG).kind is SourceKind.RECIPE
    result = recover(RECIPE_WITH_LOG, kind=SourceKind.LOG)
    best = result.best()
    assert best.score == 0.6132534303822829
    assert order_line(best.weights, Ordering.RECIPE) == stored_recipe_line()
    # the Results block alone (without the testweights pair) gives the same line
    text = RECIPE_WITH_LOG.read_text(encoding="utf-8")
    results_only = text[: text.index("2023-11-21 00:16:36")]
    assert "testweights" not in results_only
    only = parse_console_log(results_only, source="results")
    assert order_line(only.best().weights, Ordering.RECIPE) == stored_recipe_line()
    assert "Best parameter set" in only.best().location


def test_fixture_recipe_reads_the_same_weights() -> None:
    result = recover(RECIPE_WITH_LOG)
    assert result.recipe is not None
    assert result.recipe.model_a == "08b-AstolfoMix-_13a_14a.safetensors"
    assert order_line(result.best().weights, Ordering.RECIPE) == stored_recipe_line()
    assert result.best().score is None


def test_fixture_console_log_2023_11_05_best_set() -> None:
    result = recover(LOG_1105)
    assert result.kind is SourceKind.LOG
    best = result.best()
    assert best.score == 0.44875530845332806
    nat = [0.35, 0.05, 1.0, 0.7, 0.35, 0.75, 0.7, 1.0, 0.95, 0.65, 0.9, 0.05, 0.45, 1.0]
    nat += [0.4, 0.4, 0.3, 1.0, 0.5, 0.7, 0.8, 0.6, 0.95, 0.55, 0.45, 0.2, 0.2]
    assert best.weights == Weights.from_list(Arch.SD1, nat, Ordering.NAT)
    assert best.weights["OUT"] == 1.0 and best.weights["TIME_EMBED"] == 0.2
    assert order_line(best.weights, Ordering.NAT) == ",".join(format_weight(v) for v in nat)


def test_fixture_csv_with_crlf_crcrlf_and_lf_reads_the_same(tmp_path: Path) -> None:
    raw = CSV.read_bytes()
    assert b"\r\r\n" in raw  # pandas on Windows
    lf = tmp_path / "lf.csv"
    lf.write_bytes(raw.replace(b"\r", b""))
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(raw.replace(b"\r", b"").replace(b"\n", b"\r\n"))
    expected = [e.weights for e in recover(CSV).evaluations]
    assert [e.weights for e in recover(lf).evaluations] == expected
    assert [e.weights for e in recover(crlf).evaluations] == expected


def test_top_k_is_sorted_by_score() -> None:
    top = recover(CSV).top(3)
    assert [e.score for e in top] == [0.6132534303822829, 0.6103003445753185, 0.6083536285067863]


# --- detection ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (SD1_HEADER + "\n", SourceKind.MBWRT_CSV),
        ("number,state,IN00,IN01,score\n", SourceKind.HISTORY),
        ("modelA=a\nmodelB=b\n", SourceKind.RECIPE),
        ('{"format": "autombw-recipe/1"}', SourceKind.RECIPE),
        ("junk\nfoo - INFO - testweights: 1,2\n", SourceKind.LOG),
        ("\n\nResults: 'hyper_score'\n   Best parameter set:\n", SourceKind.LOG),
    ],
)
def test_detect_kind(text: str, kind: SourceKind) -> None:
    assert detect_kind(text) is kind


def test_detect_kind_unknown_names_the_source() -> None:
    with pytest.raises(JournalError, match=r"x\.txt: cannot tell what kind") as info:
        detect_kind("hello world\n", source="x.txt")
    assert "--kind" in (info.value.hint or "")


# --- ties, float text ----------------------------------------------------------------------
def test_ties_go_to_the_earliest_row() -> None:
    a = [0.1] * 27
    b = [0.2] * 27
    c = [0.3] * 27
    text = "\n".join([SD1_HEADER, nat_row(a, 0.5), nat_row(b, 0.9), nat_row(c, 0.9)]) + "\n"
    result = parse_mbwrt_csv(text)
    assert result.best().weights["IN00"] == 0.2
    assert result.best().location == "row 2 (line 3)"
    reversed_text = "\n".join([SD1_HEADER, nat_row(c, 0.9), nat_row(b, 0.9)]) + "\n"
    assert parse_mbwrt_csv(reversed_text).best().weights["IN00"] == 0.3


def test_negative_scores_rank_correctly() -> None:
    text = "\n".join([SD1_HEADER, nat_row([0.1] * 27, -2.0), nat_row([0.2] * 27, -0.5)])
    assert parse_mbwrt_csv(text + "\n").best().score == -0.5


def test_float_text_round_trips() -> None:
    values = [0.30000000000000004, 0.1 + 0.2, 1e-05, 0.9166666667] + [0.5] * 23
    text = SD1_HEADER + "\n" + nat_row(values, 0.7) + "\n"
    line = order_line(parse_mbwrt_csv(text).best().weights, Ordering.NAT)
    expected = ["0.30000000000000004", "0.30000000000000004", "1e-05", "0.9166666667"]
    assert line.split(",")[:4] == expected
    recipe = Recipe("a", "b", "o", parse_mbwrt_csv(text).best().weights)
    assert Recipe.from_text(recipe.to_text()).weights == recipe.weights


# --- console logs ---------------------------------------------------------------------------
def log_pair(values: list[float], score: float, junk: str = "") -> str:
    nat = ",".join(format_weight(v) for v in values)
    return (
        f"{junk}2023-11-21 01:27:27,668 - AutoMBWrt - INFO - testweights: {nat}\n"
        "load checkpoint from C:\\x\\ImageReward.pt\n"
        f"2023-11-21 02:02:40,953 - AutoMBWrt - INFO - test score: {score!r}\n"
    )


def test_log_pairs_crlf_carriage_returns_and_progress_bars() -> None:
    bar = "[0] hyper_score (Bayesian Optimization):   0%|          | 0/270 [00:00<?, ?it/s]"
    text = (
        log_pair([0.1] * 27, 0.3, junk=bar)
        + log_pair([0.2] * 27, 0.8, junk=bar + "\r" + bar + "\r")
        + log_pair([0.3] * 27, 0.5)
    ).replace("\n", "\r\n")
    result = parse_console_log(text, source="log.txt")
    assert [e.score for e in result.evaluations] == [0.3, 0.8, 0.5]
    best = result.best()
    assert best.weights["IN00"] == 0.2
    assert best.location == "line 4 (testweights) + line 6 (test score)"
    assert result.warnings == ()


def test_log_score_and_next_weights_on_one_line_pair_correctly() -> None:
    a = ",".join(["0.1"] * 27)
    b = ",".join(["0.2"] * 27)
    text = (
        f"INFO - testweights: {a}\n"
        f"INFO - test score: 0.3 [0] bar  1%| 1/270 [00:01<1:00, 1s/it]INFO - testweights: {b}\n"
        "INFO - test score: 0.7\n"
    )
    result = parse_console_log(text)
    assert [(e.weights["IN00"], e.score) for e in result.evaluations] == [(0.1, 0.3), (0.2, 0.7)]
    assert result.warnings == ()


def test_log_results_block_with_progress_redraws_inside() -> None:
    text = RECIPE_WITH_LOG.read_text(encoding="utf-8")
    bar = "\r[0] hyper_score (Bayesian Optimization):  35%| | 95/270 [48:30<89:21, 1838s/it]\r"
    noisy = text.replace("'5'  : 0.0  \n", "'5'  : 0.0  " + bar + "\n\n")
    assert noisy != text
    results_only = noisy[: noisy.index("2023-11-21 00:16:36")]
    best = parse_console_log(results_only).best()
    assert order_line(best.weights, Ordering.RECIPE) == stored_recipe_line()


def test_log_testweights_with_spaces_or_brackets() -> None:
    nat = ", ".join(["0.5"] * 26 + ["0.25"])
    text = f"INFO - testweights: [{nat}]\nINFO - test score: 0.5\n"
    assert parse_console_log(text).best().weights["TIME_EMBED"] == 0.25
    text = f"INFO - testweights: {nat}\nINFO - test score: 0.5\n"
    assert parse_console_log(text).best().weights["TIME_EMBED"] == 0.25
    glued = "INFO - testweights: " + ",".join(["0.5"] * 27) + "<Response [200]>\n"
    with pytest.raises(JournalError, match="is not a list of numbers"):
        parse_console_log(glued + "INFO - test score: 0.5\n")


def test_log_truncated_and_incomplete_evaluations_are_skipped_with_warnings() -> None:
    nat = ",".join(["0.5"] * 27)
    text = (
        f"INFO - testweights: {nat}\n"  # no score: a crashed evaluation
        + log_pair([0.25] * 27, 0.4)
        + "INFO - testweights: 0.1,0.2,0.3\n"  # truncated list
        + "INFO - test score: 0.99\n"  # score without usable weights
        + f"INFO - testweights: {nat[:20]}"  # the log ends mid-line
    )
    result = parse_console_log(text, source="log.txt")
    assert len(result.evaluations) == 1
    assert result.best().score == 0.4
    joined = "\n".join(result.warnings)
    assert "log.txt: line 1: testweights without a test score" in joined
    assert "line 5: testweights has 3 values, expected 27 or 22" in joined
    assert "line 6: test score without testweights" in joined
    assert "line 7: testweights" in joined


def test_log_truncated_results_block_is_skipped() -> None:
    text = RECIPE_WITH_LOG.read_text(encoding="utf-8")
    cut = text[: text.index("'17' : 0.9")]
    with pytest.raises(JournalError, match="no complete evaluation") as info:
        parse_console_log(cut, source="cut.log")
    assert "Best parameter set (truncated?) has 17 values" in info.value.message


def test_log_with_no_evaluations_is_an_error() -> None:
    with pytest.raises(JournalError, match=r"empty\.log: no complete evaluation.*testweights"):
        parse_console_log("just some text\nand more\n", source="empty.log")


def test_log_results_block_not_duplicated_by_its_testweights_pair() -> None:
    result = recover(RECIPE_WITH_LOG, kind="log")
    assert len(result.evaluations) == 1


def test_log_sdxl_and_arch_override() -> None:
    text = log_pair([0.5] * 22, 0.1)
    assert parse_console_log(text).best().weights.arch is Arch.SDXL
    sd2 = parse_console_log(log_pair([0.5] * 27, 0.1), arch=Arch.SD2)
    assert sd2.best().weights.arch is Arch.SD2
    with pytest.raises(JournalError, match="expected 22"):
        parse_console_log(log_pair([0.5] * 27, 0.1), arch=Arch.SDXL)


# --- our own history CSV -------------------------------------------------------------------
def history_text(rows: list[tuple[str, str, float, str]]) -> str:
    slots = Weights.uniform(Arch.SD1, 0.0).layout.slots
    header = "number,state," + ",".join(slots) + ",BASE,score,worker"
    lines = [header]
    for number, state, value, score in rows:
        lines.append(f"{number},{state}," + ",".join([repr(value)] * 27) + f",,{score},w1")
    return "\n".join(lines) + "\n"


def test_history_csv_skips_failed_rows_and_names_the_evaluation() -> None:
    text = history_text(
        [
            ("0", "complete", 0.1, "0.5"),
            ("1", "failed", 0.2, ""),
            ("2", "COMPLETE", 0.3, "0.6"),
            ("3", "incomplete", 0.9, "0.9"),
            ("4", "State.FAILED", 0.9, "0.9"),
            ("5", "TrialState.COMPLETE", 0.4, "0.55"),
        ]
    )
    assert detect_kind(text) is SourceKind.HISTORY
    result = parse_history_csv(text, source="history.csv")
    assert len(result.evaluations) == 3
    assert result.best().weights == Weights.uniform(Arch.SD1, 0.3)
    assert result.best().location == "evaluation 2, row 3 (line 4)"


def test_history_csv_reads_base_and_sdxl() -> None:
    slots = Weights.uniform(Arch.SDXL, 0.0).layout.slots
    text = "score," + ",".join(slots) + ",BASE\n0.1," + ",".join(["0.4"] * 22) + ",0.9\n"
    best = parse_history_csv(text).best()
    assert best.weights.arch is Arch.SDXL and best.weights.text_encoder == 0.9


def test_history_csv_only_failed_rows_is_an_error() -> None:
    with pytest.raises(JournalError, match=r"1 row.*none completed"):
        parse_history_csv(history_text([("0", "failed", 0.1, "")]), source="h.csv")


def test_history_csv_missing_slot_column() -> None:
    with pytest.raises(JournalError, match=r"no column for IN01, IN02.*TIME_EMBED \(sd1\)"):
        parse_history_csv("IN00,IN11,score\n0.1,0.1,0.5\n")


# --- bad input: errors name the file and row/line, nothing is written ----------------------
BAD_CSV_CASES = [
    (SD1_HEADER + "\n" + ",".join(["0.5"] * 20) + "\n" + nat_row([0.1] * 27, 0.5) + "\n",
     r"bad\.csv: row 1 \(line 2\): expected 30 cells like the header, got 20"),
    (SD1_HEADER + "\n" + nat_row([0.1] * 27, 0.5).replace("0.1", "abc", 1) + "\n",
     r"bad\.csv: row 1 \(line 2\), column 0: 'abc' is not a number"),
    (SD1_HEADER + "\n" + nat_row([0.1] * 27, 0.5).replace(",0.5,", ",nan,") + "\n",
     r"bad\.csv: row 1 \(line 2\), column score: 'nan' is not a finite number"),
    (",".join(str(i) for i in range(25)) + ",score\n",
     r"bad\.csv: header: expected weight columns 0\.\.26.*found 25"),
    (SD1_HEADER + "\n", r"bad\.csv: no complete evaluation found"),
    (SD1_HEADER + "\n" + nat_row([0.1] * 27, 0.5)[:40],
     r"bad\.csv: no complete evaluation found.*torn last line"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_CSV_CASES)
def test_bad_mbwrt_csv(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(JournalError, match=message):
        recover(path)


def test_torn_last_line_is_skipped_with_a_warning() -> None:
    text = SD1_HEADER + "\n" + nat_row([0.1] * 27, 0.5) + "\n" + nat_row([0.2] * 27, 0.9)[:50]
    result = parse_mbwrt_csv(text, source="h.csv")
    assert len(result.evaluations) == 1
    assert result.warnings == ("h.csv: row 2 (line 3): torn last line (no line end); skipped",)


def test_value_out_of_range_in_csv_is_reported_with_the_row() -> None:
    text = SD1_HEADER + "\n" + nat_row([0.1] * 26 + [5.0], 0.5) + "\n"
    # Weights itself accepts any finite value; recover reports what the file says
    assert parse_mbwrt_csv(text).best().weights["TIME_EMBED"] == 5.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"   \n\r\n", "the file is empty"),
        (b"\x00\x01\x02garbage\xff", "binary data"),
        (bytes(range(256)) * 4, "binary data"),
        (b"\xff\xfe\xfa not text but no nul", "cannot tell what kind"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "thing.bin"
    path.write_bytes(content)
    with pytest.raises(JournalError, match=message) as info:
        recover(path)
    assert str(path) in info.value.message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match=r"nope\.csv: no such file"):
        recover(tmp_path / "nope.csv")
    with pytest.raises(JournalError, match="is a folder"):
        recover(tmp_path)


def test_bad_recipe_wrong_count(tmp_path: Path) -> None:
    path = tmp_path / "x.recipe.txt"
    path.write_text("modelA=a\nmodelB=b\n" + ",".join(["0.5"] * 26) + "\n")
    with pytest.raises(JournalError, match=r"x\.recipe\.txt: line 3: expected 27 values"):
        recover(path)


def test_bad_recipe_number(tmp_path: Path) -> None:
    path = tmp_path / "x.recipe.txt"
    path.write_text("modelA=a\nmodelB=b\n" + ",".join(["0.5"] * 26) + ",1e999\n")
    with pytest.raises(WeightsError, match="line 3, position 27"):
        recover(path)


# --- writing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("best.recipe.txt", "best"),
        ("best.recipe.json", "best"),
        ("best.txt", "best"),
        ("best", "best"),
        ("my.model", "my.model"),
    ],
)
def test_recipe_stem(name: str, stem: str) -> None:
    assert recipe_stem(Path("d") / name) == Path("d") / stem


def test_write_recovered_recipe_and_refuse_overwrite(tmp_path: Path) -> None:
    best = recover(CSV).best()
    recipe = recipe_for(best, model_a="a.safetensors", model_b="b.safetensors", output_name="o")
    txt, js = write_recovered_recipe(recipe, tmp_path / "best.recipe.txt", force=False)
    assert txt.read_text().splitlines()[-1] == stored_recipe_line()
    assert read_recipe_file(js) == recipe
    with pytest.raises(OutputExistsError, match="already exists"):
        write_recovered_recipe(recipe, tmp_path / "best", force=False)
    write_recovered_recipe(recipe, tmp_path / "best", force=True)


def test_recipe_for_keeps_the_source_recipe_fields() -> None:
    result = recover(RECIPE_WITH_LOG)
    recipe = recipe_for(result.best(), model_a="", model_b="", output_name="", base=result.recipe)
    assert recipe == result.recipe
    other = recipe_for(result.best(), model_a="x", model_b="", output_name="", base=result.recipe)
    assert other.model_a == "x" and other.model_b == result.recipe.model_b


# --- merged checkpoints ---------------------------------------------------------------------
def write_safetensors(path: Path, metadata: dict[str, str] | None) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.out.0.weight": torch.zeros(4)}, str(path), metadata)
    return path


def test_checkpoint_recipe_is_read_from_the_header(tmp_path: Path) -> None:
    recipe = recover(RECIPE_WITH_LOG).recipe
    assert recipe is not None
    path = write_safetensors(tmp_path / "m.safetensors", recipe.safetensors_metadata())
    result = recover(path)
    assert result.kind is SourceKind.CHECKPOINT
    assert result.recipe == recipe
    assert order_line(result.best().weights, Ordering.RECIPE) == stored_recipe_line()
    # a runtime-block-merge file carries only sd_mbwrt_recipe; the kind can be forced
    mbwrt = {"sd_mbwrt_recipe": recipe.safetensors_metadata()["sd_mbwrt_recipe"]}
    other = write_safetensors(tmp_path / "other.bin", mbwrt)
    assert recover(other, kind="checkpoint").recipe == recipe
    assert recover(other).recipe == recipe  # detected by content, not by name


def test_checkpoint_without_recipe_or_broken(tmp_path: Path) -> None:
    plain = write_safetensors(tmp_path / "plain.safetensors", {"format": "pt"})
    with pytest.raises(JournalError, match=r"plain\.safetensors: no recipe found"):
        recover(plain)
    raw = plain.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:20])
    with pytest.raises(JournalError, match=r"cut\.safetensors: truncated safetensors header"):
        recover(cut)
    with pytest.raises(JournalError, match=r"not a \.safetensors file"):
        recover(CSV, kind="checkpoint")
    with pytest.raises(JournalError, match="no such file"):
        recover(tmp_path / "none.safetensors", kind="checkpoint")
    with pytest.raises(JournalError, match="no such file"):
        recover(tmp_path / "none.safetensors")


def test_sdxl_nat_csv_and_sd2_override() -> None:
    header = ",".join(str(i) for i in range(22)) + ",score"
    values = [i / 100 for i in range(22)]
    text = header + "\n" + ",".join(map(format_weight, values)) + ",0.5\n"
    best = parse_mbwrt_csv(text).best()
    assert best.weights.arch is Arch.SDXL
    # nat order for SDXL: IN00..IN08, M00, OUT, OUT00..OUT08, TIME_EMBED, LABEL_EMB
    assert best.weights["M00"] == 0.09 and best.weights["OUT"] == 0.1
    assert best.weights["OUT00"] == 0.11 and best.weights["LABEL_EMB"] == 0.21
    assert order_line(best.weights, Ordering.NAT) == ",".join(map(format_weight, values))
    sd2 = recover(CSV, arch=Arch.SD2).best()
    assert sd2.weights.arch is Arch.SD2
    assert order_line(sd2.weights, Ordering.RECIPE) == stored_recipe_line()
    with pytest.raises(JournalError, match="sdxl needs 22 weight columns"):
        recover(CSV, arch=Arch.SDXL)


def test_plan_outputs_names_and_refusals(tmp_path: Path) -> None:
    from autombw_cli.errors import ConfigError
    from autombw_cli.recover import plan_outputs

    csv_result = recover(CSV)
    plan = plan_outputs(csv_result, out=tmp_path / "best.recipe.txt")
    assert plan.recipe_stem == tmp_path / "best" and plan.recipe.output_name == "best"
    assert plan.recipe.model_a == "" and plan.merge_inputs is None
    a, b, merged = tmp_path / "a.safetensors", tmp_path / "b.ckpt", tmp_path / "m.safetensors"
    plan = plan_outputs(csv_result, merge=(a, b), output=merged, dtype="fp16")
    assert (plan.recipe.model_a, plan.recipe.model_b) == ("a.safetensors", "b.ckpt")
    assert plan.recipe.output_name == "m"
    plan = plan_outputs(csv_result, merge=(a, b), output=merged, model_a="x", name="n")
    assert plan.recipe.model_a == "x" and plan.recipe.output_name == "n"
    recipe_result = recover(RECIPE_WITH_LOG)
    plan = plan_outputs(recipe_result, out=tmp_path / "r")
    assert plan.recipe == recipe_result.recipe  # the source recipe's names are kept
    merged.write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"m\.safetensors already exists"):
        plan_outputs(csv_result, merge=(a, b), output=merged)
    assert plan_outputs(csv_result, merge=(a, b), output=merged, force=True).force
    with pytest.raises(ConfigError, match="needs -o OUT"):
        plan_outputs(csv_result, merge=(a, b))


def test_reads_the_search_journal_history_csv(tmp_path: Path) -> None:
    """The seam with search/journal.py: what the journal writes, recover reads."""
    journal_mod = pytest.importorskip("autombw_cli.search.journal")
    evaluation_mod = pytest.importorskip("autombw_cli.search.evaluation")
    journal = journal_mod.Journal(tmp_path, Arch.SD1)
    weights = [
        Weights.uniform(Arch.SD1, 0.25),
        Weights.uniform(Arch.SD1, 0.5, text_encoder=0.125).replace({"OUT": 0.1 + 0.2}),
        Weights.uniform(Arch.SD1, 0.75),
        Weights.uniform(Arch.SD1, 1.0),
    ]
    for number, (w, score) in enumerate(zip(weights, [0.1, 0.9, None, 0.9], strict=True)):
        state = "failed" if score is None else "complete"
        journal.append(
            evaluation_mod.Evaluation(
                number=number,
                weights=w,
                score=score,
                pass_index=1 + number // 2,
                payload_scores={"portrait, 1": 0.5} if score is not None else {},
                timings={"merge_s": 1.5},
                state=state,
            )
        )
    history = tmp_path / "history.csv"
    with history.open("a") as fh:
        fh.write("4,2,complete,2026-01-01T00:00:00")  # a torn last line (killed mid-write)
    result = recover(history)
    assert result.kind is SourceKind.HISTORY
    assert [e.score for e in result.evaluations] == [0.1, 0.9, 0.9]
    best = result.best()  # ties: the earliest of the two 0.9s
    assert best.weights == weights[1]
    assert best.weights["OUT"] == 0.30000000000000004 and best.weights.text_encoder == 0.125
    assert best.location == "evaluation 1, pass 1, row 2 (line 3)"
    assert len(result.warnings) == 1 and "torn last line" in result.warnings[0]
