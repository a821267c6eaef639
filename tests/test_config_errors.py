"""Bad configs: every error names the file, the field path and (where it can) the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from autombw_cli.config import load_config
from autombw_cli.errors import ConfigError

HEAD = """\
models:
  a: a.safetensors
  b: b.safetensors
instances:
  simulate: 1
payloads: [p.json]
"""


@pytest.fixture
def write(tmp_path: Path):
    (tmp_path / "p.json").write_text('{"prompt": "x"}')

    def _write(text: str, name: str = "c.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == 2
    return str(info.value)


def assert_names(message: str, path: Path, field: str, line: int | None = None) -> None:
    assert str(path) in message, message
    assert field in message, message
    if line is not None:
        assert f"{path}:{line}" in message, message


def test_malformed_yaml_names_file_and_line(write) -> None:
    path = write("models:\n  a: x\n b: y\n")
    message = error_of(path)
    assert "malformed YAML" in message
    assert re.search(rf"{re.escape(str(path))}:3:\d+", message)


def test_tabs_are_malformed(write) -> None:
    path = write(HEAD + "search:\n\tseed: 1\n")
    message = error_of(path)
    assert "malformed YAML" in message and f"{path}:8" in message


def test_missing_config_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_config(write, text: str) -> None:
    path = write(text)
    assert "empty" in error_of(path)


def test_not_a_mapping(write) -> None:
    path = write("- models\n- instances\n")
    assert "expected a mapping of sections" in error_of(path)


def test_unknown_top_level_key_did_you_mean(write) -> None:
    path = write(HEAD + "serach:\n  seed: 1\n")
    message = error_of(path)
    assert_names(message, path, "serach", line=7)
    assert "did you mean 'search'?" in message


def test_misspelled_nested_key_did_you_mean(write) -> None:
    path = write(HEAD + "search:\n  passes:\n    - optimizr: tpe\n")
    message = error_of(path)
    assert_names(message, path, "search.passes[0].optimizr", line=9)
    assert "did you mean 'optimizer'?" in message


def test_misspelled_key_in_simulated_instances(write) -> None:
    path = write(HEAD.replace("simulate: 1", "simulate: 1\n  latencyy: 2"))
    message = error_of(path)
    assert_names(message, path, "instances.latencyy", line=6)
    assert "did you mean 'latency'?" in message


def test_misspelled_key_in_instance_list(write) -> None:
    path = write(HEAD.replace("simulate: 1", "- url: http://h:1\n    lable: x"))
    message = error_of(path)
    assert_names(message, path, "instances[0].lable", line=6)
    assert "did you mean 'label'?" in message


def test_wrong_type(write) -> None:
    path = write(HEAD + "search:\n  max_evaluations: lots\n")
    message = error_of(path)
    assert_names(message, path, "search.max_evaluations", line=8)
    assert "valid integer" in message and "'lots'" in message


def test_wrong_choice_did_you_mean(write) -> None:
    path = write(HEAD + "outputs:\n  dtype: fp61\n")
    message = error_of(path)
    assert_names(message, path, "outputs.dtype", line=8)
    assert "did you mean 'fp16'?" in message


def test_several_errors_are_listed_together(write) -> None:
    path = write(HEAD + "search:\n  seed: -1\n  intervals: 0\noutputs:\n  dtype: f\n")
    message = error_of(path)
    assert "3 errors" in message
    for field in ("search.seed", "search.intervals", "outputs.dtype"):
        assert field in message


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("search:\n  frozen:\n    IN00: 1.5\n", "search.frozen.IN00"),
        ("search:\n  clamps:\n    IN00: [0.5, 1.2]\n", "search.clamps.IN00"),
        ("search:\n  initial:\n    weights: '1.5'\n", "search.initial.weights"),
    ],
)
def test_out_of_range_weights(write, section: str, field: str) -> None:
    path = write(HEAD + section)
    message = error_of(path)
    assert_names(message, path, field, line=9)
    assert "outside 0..1" in message and "extrapolation" in message


def test_extrapolation_widens_the_range(write) -> None:
    path = write(HEAD + "search:\n  extrapolation: true\n  frozen:\n    IN00: 2.5\n")
    message = error_of(path)
    assert "outside -1..2" in message


def test_unknown_block_name(write) -> None:
    path = write(HEAD + "search:\n  frozen:\n    IN99: 0\n")
    message = error_of(path)
    assert_names(message, path, "search.frozen.IN99", line=9)
    assert "unknown block name 'IN99'" in message


def test_sdxl_has_no_in11(write) -> None:
    path = write(
        HEAD.replace("b.safetensors", "b.safetensors\n  arch: sdxl") + "search:\n  blocks: [IN11]\n"
    )
    assert "unknown block name 'IN11' for sdxl" in error_of(path)


def test_block_both_searched_and_frozen(write) -> None:
    path = write(HEAD + "search:\n  blocks: [IN00, M00]\n  frozen: {M00: 1}\n")
    assert "M00 is both searched and frozen" in error_of(path)


def test_blocks_neither_searched_nor_frozen_need_initial(write) -> None:
    path = write(HEAD + "search:\n  blocks: [IN00]\n")
    message = error_of(path)
    assert_names(message, path, "search.blocks", line=8)
    assert "neither searched nor frozen" in message and "search.initial" in message


def test_groups_must_not_overlap(write) -> None:
    path = write(HEAD + "search:\n  groups:\n    - [IN00, IN01]\n    - [IN01, IN02]\n")
    message = error_of(path)
    assert_names(message, path, "search.groups[1][0]", line=10)
    assert "already in search.groups[0]" in message


def test_clamp_without_grid_value(write) -> None:
    path = write(HEAD + "search:\n  intervals: 2\n  clamps: {IN00: [0.1, 0.4]}\n")
    assert "holds no grid value" in error_of(path)
    ok = write(HEAD + "search:\n  continuous: true\n  clamps: {IN00: [0.1, 0.4]}\n", "ok.yaml")
    assert load_config(ok).search.clamps == {"IN00": (0.1, 0.4)}


def test_initial_needs_exactly_one_source(write) -> None:
    path = write(HEAD + "search:\n  initial: {weights: '0.5', preset: GRAD_V}\n")
    message = error_of(path)
    assert_names(message, path, "search.initial", line=8)
    assert "exactly one of weights, recipe, preset" in message


def test_unknown_preset_did_you_mean(write) -> None:
    path = write(HEAD + "search:\n  initial: {preset: GRAD_W}\n")
    message = error_of(path)
    assert_names(message, path, "search.initial.preset")
    assert "did you mean 'GRAD_V'?" in message


def test_wrong_weight_count(write) -> None:
    path = write(HEAD + "search:\n  initial:\n    weights: '0.1,0.2,0.3'\n")
    message = error_of(path)
    assert_names(message, path, "search.initial.weights", line=9)
    assert "got 3 values; expected 27" in message


def test_missing_recipe_file(write) -> None:
    path = write(HEAD + "search:\n  initial:\n    recipe: best.recipe.txt\n")
    message = error_of(path)
    assert_names(message, path, "search.initial.recipe", line=9)
    assert "file not found" in message


def test_too_many_passes(write) -> None:
    path = write(HEAD + "search:\n  passes: [tpe, tpe, tpe, tpe]\n")
    message = error_of(path)
    assert_names(message, path, "search.passes", line=8)
    assert "at most 3" in message


def test_unknown_optimizer_did_you_mean(write) -> None:
    path = write(HEAD + "search:\n  passes:\n    - optimizer: HillClimbin\n")
    message = error_of(path)
    assert_names(message, path, "search.passes[0].optimizer", line=9)
    assert "did you mean 'HillClimbing'?" in message


def test_bad_optimizer_setting(write) -> None:
    pytest.importorskip("autombw_cli.search.optimizers.registry")  # settings checks live there
    path = write(
        HEAD + "search:\n  passes:\n    - optimizer: HillClimbing\n      settings: {epsilonn: 1}\n"
    )
    message = error_of(path)
    assert_names(message, path, "search.passes[0].settings.epsilonn", line=10)
    assert "did you mean 'epsilon'?" in message


def test_bad_duration(write) -> None:
    path = write(HEAD + "search:\n  max_time: soon\n")
    message = error_of(path)
    assert_names(message, path, "search.max_time", line=8)
    assert "not a duration" in message


def test_missing_payload_file(write) -> None:
    path = write(HEAD.replace("[p.json]", "[p.json, gone.json]"))
    message = error_of(path)
    assert_names(message, path, "payloads[1]", line=6)
    assert "gone.json" in message


def test_missing_wildcard_folder(write) -> None:
    path = write(
        HEAD.replace("payloads: [p.json]", "payloads:\n  files: [p.json]\n  wildcards: wc")
    )
    message = error_of(path)
    assert_names(message, path, "payloads.wildcards", line=8)
    assert "folder not found" in message


def test_missing_required_section(write) -> None:
    path = write("models: {a: x, b: y}\ninstances: {simulate: 1}\n")
    message = error_of(path)
    assert_names(message, path, "payloads")
    assert "Field required" in message


def test_same_model_twice(write) -> None:
    path = write(HEAD.replace("b.safetensors", "a.safetensors"))
    message = error_of(path)
    assert_names(message, path, "models.b", line=3)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("127.0.0.1:7860", "needs a scheme and host"),
        ("ftp://host:21", "needs a scheme and host"),
        ("http://host:99999", "invalid port"),
        ("http://host:0", "invalid port"),
        ("http://host:port", "invalid port"),
        ("http://user:pw@host:7860", "credentials in the URL are not allowed"),
        ("http://host:7860/?x=1", "query"),
    ],
)
def test_bad_urls(write, url: str, words: str) -> None:
    path = write(HEAD.replace("simulate: 1", f"- url: '{url}'"))
    message = error_of(path)
    assert_names(message, path, "instances[0].url", line=5)
    assert words in message


def test_auth_must_name_variables_not_secrets(write) -> None:
    path = write(
        HEAD.replace(
            "simulate: 1",
            "- url: http://h:1\n    auth: {user_env: admin, password_env: 'hunter2!'}",
        )
    )
    message = error_of(path)
    assert_names(message, path, "instances[0].auth.password_env", line=6)
    assert "not an environment variable name" in message


def test_duplicate_instances(write) -> None:
    path = write(HEAD.replace("simulate: 1", "- http://h:1\n  - url: http://h:1/"))
    message = error_of(path)
    assert_names(message, path, "instances[1].url", line=6)
    assert "listed twice" in message


def test_instances_wrong_form(write) -> None:
    path = write(HEAD.replace("simulate: 1", "http://h:1").replace("instances:\n  ", "instances: "))
    message = error_of(path)
    assert_names(message, path, "instances", line=4)
    assert "{simulate: N}" in message


def test_simulated_arch_must_match(write) -> None:
    path = write(HEAD.replace("simulate: 1", "simulate: 1\n  arch: sdxl"))
    message = error_of(path)
    assert_names(message, path, "instances.arch", line=6)


def test_offline_merge_needs_files(write) -> None:
    path = write(HEAD + "outputs:\n  merge_via: offline\n")
    message = error_of(path)
    assert_names(message, path, "outputs.merge_via", line=8)
    assert "a_file" in message


def test_duplicate_key(write) -> None:
    path = write(HEAD + "search:\n  seed: 1\n  seed: 2\n")
    message = error_of(path)
    assert f"{path}:9" in message and "search.seed" in message and "twice" in message


def test_scorer_path_missing(write) -> None:
    path = write(HEAD + "scorer:\n  paths:\n    checkpoint: models/ImageReward.pt\n")
    message = error_of(path)
    assert_names(message, path, "scorer.paths.checkpoint", line=9)
    assert "file not found" in message


def test_scorer_section_errors_name_the_field(write) -> None:
    path = write(HEAD + "scorer:\n  tally: geometrik\n")
    message = error_of(path)
    assert_names(message, path, "scorer.tally", line=8)


def test_bad_timeouts(write) -> None:
    path = write(
        HEAD.replace("simulate: 1", "- url: http://h:1\n    timeouts: {keepalive_expiry: 9}")
    )
    message = error_of(path)
    assert_names(message, path, "instances[0].timeouts.keepalive_expiry", line=6)
    assert "below 5" in message


@pytest.mark.parametrize(
    ("members", "field", "text"),
    [
        ("[tpex, cmaes]", "members[0]", "unknown optimizer 'tpex'; did you mean 'tpe'?"),
        ("[tpe, {optimizer: cmaes, settings: {sigma: 2}}]", "members[1]", "did you mean 'sigma0'"),
        ("[portfolio, tpe]", "members[0]", "cannot be a member of a portfolio"),
        ("[tpe]", "members", "at least two members"),
    ],
)
def test_bad_portfolio_members_name_the_member(write, members, field, text) -> None:
    body = "search:\n  passes:\n    - optimizer: portfolio\n      settings:\n"
    path = write(HEAD + body + f"        members: {members}\n")
    message = error_of(path)
    assert f"search.passes[0].settings.{field}" in message
    assert text in message
