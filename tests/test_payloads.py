"""Payload files and their one-time, deterministic wildcard expansion."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from autombw_cli.errors import OutputExistsError, PayloadError
from autombw_cli.payloads import (
    Payload,
    derive_seed,
    expand_payload,
    expand_payloads,
    load_payload,
    load_payloads,
    new_payload,
    write_payload,
)
from autombw_cli.search.prompt import PromptSpec
from conftest import REPO_ROOT

# What auto-MBW-rt's "Create Payload" button writes (scripts/payload/create_payload.py).
AUTO_MBW_RT_PAYLOAD = {
    "enable_hr": False,
    "denoising_strength": 0.7,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "prompt": "1girl, __color__ hair, {smile|frown}",
    "seed": 1,
    "sampler_name": "Euler a",
    "batch_size": 1,
    "n_iter": 3,
    "steps": 48,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "negative_prompt": "lowres",
    "wildcard_type": "random",
    "reverse_scoring": False,
}


@pytest.fixture
def wild(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    (folder / "sub").mkdir(parents=True)
    (folder / "color.txt").write_text("red\nblue\ngreen\nblack\nwhite\nsilver\n")
    (folder / "sub" / "animal.txt").write_text("cat\ndog\n")
    return folder


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def payload(**fields) -> Payload:
    return Payload.model_validate(fields)


# --- loading ----------------------------------------------------------------------------
def test_reads_an_auto_mbw_rt_payload_as_is(tmp_path: Path) -> None:
    p = load_payload(write_json(tmp_path / "girl.json", AUTO_MBW_RT_PAYLOAD))
    assert p.name == "girl"
    assert p.wildcard_type == "random" and p.reverse_scoring is False and p.score_weight == 1.0
    assert p.steps == 48 and p.cfg_scale == 7.0 and p.width == 512 and p.n_iter == 3


def test_yaml_payload(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("prompt: a cat\nsteps: 12\nscore_weight: 0.5\nreverse_scoring: true\n")
    p = load_payload(path)
    assert (p.prompt, p.steps, p.score_weight, p.reverse_scoring) == ("a cat", 12, 0.5, True)


def test_unknown_fields_pass_through_untouched(tmp_path: Path) -> None:
    extra = {
        "alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]}},
        "script_name": None,
        "override_settings_restore_afterwards": True,
        "s_churn": 0.5,
    }
    p = load_payload(write_json(tmp_path / "p.json", {"prompt": "x", **extra}))
    body = expand_payload(p, None, 0)[0].txt2img_body()
    for key, value in extra.items():
        assert body[key] == value


def test_body_strips_our_fields_and_only_sends_set_fields(tmp_path: Path) -> None:
    p = load_payload(
        write_json(
            tmp_path / "p.json", AUTO_MBW_RT_PAYLOAD | {"score_weight": 2, "wildcard_type": "none"}
        )
    )
    body = expand_payloads([p], None, 0)[0].txt2img_body()
    for own in ("wildcard_type", "reverse_scoring", "score_weight", "name"):
        assert own not in body
    assert body["steps"] == 48 and body["hr_upscaler"] == "Latent"
    assert body["send_images"] is True
    minimal = expand_payload(payload(prompt="x"), None, 0)[0].txt2img_body()
    assert minimal == {
        "prompt": "x",
        "negative_prompt": "",
        "seed": 1,
        "n_iter": 1,
        "send_images": True,
    }


def test_body_is_a_fresh_copy() -> None:
    e = expand_payload(
        payload(prompt="x", override_settings={"CLIP_stop_at_last_layers": 2}), None, 0
    )[0]
    body = e.txt2img_body()
    body["override_settings"]["CLIP_stop_at_last_layers"] = 1
    body["prompt"] = "changed"
    assert e.txt2img_body()["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert e.txt2img_body()["prompt"] == "x"


def test_payload_is_frozen() -> None:
    p = payload(prompt="x")
    with pytest.raises(ValidationError):
        p.prompt = "y"  # type: ignore[misc]
    q = p.model_copy(update={"prompt": "y"})
    assert (p.prompt, q.prompt) == ("x", "y")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("steps", "many", "valid integer"),
        ("width", 32, "greater than or equal to 64"),
        ("seed", -5, "greater than or equal to -1"),
        ("score_weight", -1, "greater than or equal to 0"),
        ("reverse_scoring", "perhaps", "valid boolean"),
        ("wildcard_type", "lucky", "'none', 'random', 'combinatorial' or 'jinja2'"),
        ("send_images", False, "must be true"),
        ("denoising_strength", 1.5, "less than or equal to 1"),
    ],
)
def test_known_fields_are_type_checked(tmp_path: Path, field: str, value, words: str) -> None:
    path = write_json(tmp_path / "bad.json", {"prompt": "x", field: value})
    with pytest.raises(PayloadError) as info:
        load_payload(path)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert str(path) in message and field in message and words in message
    assert f"{path}:" in message  # with the line of the field


def test_wildcard_type_did_you_mean(tmp_path: Path) -> None:
    path = write_json(tmp_path / "bad.json", {"wildcard_type": "combinatoral"})
    with pytest.raises(PayloadError, match="did you mean 'combinatorial'"):
        load_payload(path)


def test_broken_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "prompt": "x",\n  "steps": 20\n  "seed": 1\n}\n')
    with pytest.raises(PayloadError) as info:
        load_payload(path)
    assert f"{path}:4:" in str(info.value) and "malformed JSON" in str(info.value)


def test_broken_yaml_payload(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("prompt: [unclosed\n")
    with pytest.raises(PayloadError, match="malformed YAML"):
        load_payload(path)


@pytest.mark.parametrize("text", ["[1, 2]", "null", ""])
def test_payload_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.json" if text else tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PayloadError, match="a payload is a mapping"):
        load_payload(path)


def test_missing_payload_file(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match=r"gone\.json: payload file not found"):
        load_payload(tmp_path / "gone.json")


def test_duplicate_payload_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = write_json(tmp_path / "a" / "p.json", {"prompt": "x"})
    two = write_json(tmp_path / "b" / "p.json", {"prompt": "y"})
    with pytest.raises(PayloadError, match="also used by"):
        load_payloads([one, two])
    named = write_json(tmp_path / "b" / "p.json", {"prompt": "y", "name": "other"})
    assert [p.name for p in load_payloads([one, named])] == ["p", "other"]


def test_warnings_for_misspelt_fields_and_unexpanded_wildcards() -> None:
    p = payload(prompt="a {cat|dog}", negativ_prompt="bad", seed=-1)
    text = " ".join(p.warnings())
    assert "did you mean 'negative_prompt'" in text
    assert "wildcard_type is none" in text
    assert "seed is -1" in text
    assert payload(prompt="plain").warnings() == []


def test_a_full_a1111_export_has_no_typo_warnings(tmp_path: Path) -> None:
    """Every field of A1111 1.10.1's txt2img request is a real field, not a typo of ours
    (hr_sampler_name once read as a misspelt hr_upscaler...); a real typo still warns."""
    from typer.testing import CliRunner

    from autombw_cli.cli import app
    from autombw_cli.payloads import A1111_TXT2IMG_FIELDS

    untyped = A1111_TXT2IMG_FIELDS - set(Payload.model_fields)  # kept as extras, unchecked
    export = dict.fromkeys(untyped, None)
    export.update(prompt="a cat", hr_prompt="", hr_negative_prompt="", hr_scheduler="Automatic")
    export["hr_sampler_name"] = "Euler"
    assert payload(**export).warnings() == []
    assert "did you mean 'hr_upscaler'" in " ".join(payload(hr_upscalr="x").warnings())
    path = write_json(tmp_path / "export.json", {"prompt": "x", "hr_sampler_name": "Euler"})
    result = CliRunner().invoke(app, ["payload", "show", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "checked by the WebUI" in result.stdout
    assert "warning" not in result.output


# --- expansion --------------------------------------------------------------------------
def test_none_keeps_the_payload_as_written() -> None:
    [e] = expand_payload(payload(prompt="a {cat|dog}", n_iter=4, batch_size=2, seed=7), None, 0)
    assert (e.prompt, e.seed, e.seed_derived, e.images) == ("a {cat|dog}", 7, False, 8)
    assert e.txt2img_body()["n_iter"] == 4
    assert isinstance(e, PromptSpec) and e.key == "payload#0"


def test_random_is_deterministic_and_seeded_by_the_run(wild: Path) -> None:
    p = payload(
        name="girl", prompt="__color__ __sub/animal__ {a|b|c}", wildcard_type="random", n_iter=6
    )
    first = [e.prompt for e in expand_payload(p, wild, 0)]
    again = [e.prompt for e in expand_payload(p, wild, 0)]
    other = [e.prompt for e in expand_payload(p, wild, 1)]
    assert first == again
    assert first != other
    assert len(first) == 6 and all("__" not in s and "{" not in s for s in first)
    assert all(e.txt2img_body()["n_iter"] == 1 for e in expand_payload(p, wild, 0))


def test_adding_a_payload_does_not_change_another_ones_prompts(wild: Path) -> None:
    a = payload(name="a", prompt="__color__ {x|y|z}", wildcard_type="random", n_iter=5)
    b = payload(name="b", prompt="__color__", wildcard_type="random", n_iter=5)
    alone = [e.prompt for e in expand_payloads([a], wild, 3)]
    together = [e.prompt for e in expand_payloads([b, a], wild, 3) if e.payload_name == "a"]
    assert alone == together


def test_combinatorial_zips_and_repeats_a_plain_negative(wild: Path) -> None:
    p = payload(
        prompt="__sub/animal__ {x|y}",
        negative_prompt="ugly",
        wildcard_type="combinatorial",
        n_iter=10,
    )
    got = expand_payload(p, wild, 0)
    assert sorted(e.prompt for e in got) == ["cat x", "cat y", "dog x", "dog y"]
    assert {e.negative_prompt for e in got} == {"ugly"}
    capped = expand_payload(p.model_copy(update={"n_iter": 3}), wild, 0)
    assert len(capped) == 3


def test_prompt_and_negative_variants_are_zipped(wild: Path) -> None:
    p = payload(
        prompt="{a|b}",
        negative_prompt="{x|y}",
        wildcard_type="combinatorial",
        n_iter=2,
    )
    assert [(e.prompt, e.negative_prompt) for e in expand_payload(p, wild, 0)] == [
        ("a", "x"),
        ("b", "y"),
    ]


def test_jinja2_is_deterministic_and_restores_global_random(wild: Path) -> None:
    p = payload(
        prompt="{{ random() }} {{ choice(['a', 'b', 'c']) }}", wildcard_type="jinja2", n_iter=3
    )
    random.seed(123)
    state = random.getstate()
    first = [e.prompt for e in expand_payload(p, wild, 0)]
    assert random.getstate() == state
    assert first == [e.prompt for e in expand_payload(p, wild, 0)]
    assert first != [e.prompt for e in expand_payload(p, wild, 1)]


def test_seed_minus_one_becomes_a_fixed_reported_seed(wild: Path) -> None:
    p = payload(name="n", prompt="__color__", wildcard_type="random", n_iter=4, seed=-1)
    got = expand_payload(p, wild, 5)
    seeds = [e.seed for e in got]
    assert all(e.seed_derived for e in got)
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == 4
    assert seeds == [e.seed for e in expand_payload(p, wild, 5)]
    assert seeds != [e.seed for e in expand_payload(p, wild, 6)]
    assert [e.txt2img_body()["seed"] for e in got] == seeds
    assert seeds[0] == derive_seed(5, "n", 0, "seed")
    [plain] = expand_payload(payload(prompt="x", seed=-1), None, 5)
    assert plain.seed_derived and plain.seed >= 0


def test_fixed_seed_is_kept_for_every_variant(wild: Path) -> None:
    p = payload(prompt="__color__", wildcard_type="random", n_iter=3, seed=99)
    assert [(e.seed, e.seed_derived) for e in expand_payload(p, wild, 0)] == [(99, False)] * 3


def test_random_variants_are_distinct_while_the_wildcards_allow(wild: Path) -> None:
    """n_iter 3 over 6 possible prompts once drew the same prompt twice (with a fixed seed: the
    same image rendered twice and counted twice)."""
    for run_seed in range(30):
        p = payload(prompt="__color__", wildcard_type="random", n_iter=6, seed=7)
        got = [(e.prompt, e.seed) for e in expand_payload(p, wild, run_seed)]
        assert len(got) == 6 and len(set(got)) == 6, (run_seed, got)
        three = payload(prompt="a {x|y|z} __sub/animal__", wildcard_type="random", n_iter=3)
        prompts = [e.prompt for e in expand_payload(three, wild, run_seed)]
        assert len(set(prompts)) == 3, (run_seed, prompts)


def test_random_asks_for_more_variants_than_the_wildcards_have(
    wild: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fixed = payload(name="few", prompt="__sub/animal__", wildcard_type="random", n_iter=4, seed=3)
    with caplog.at_level("WARNING"):
        got = expand_payload(fixed, wild, 0)
    assert sorted(e.prompt for e in got) == ["cat", "dog"]  # no image rendered twice
    assert "payload few: n_iter is 4 but its wildcards gave only 2 distinct" in caplog.text
    caplog.clear()
    derived = fixed.model_copy(update={"seed": -1})
    with caplog.at_level("WARNING"):
        got = expand_payload(derived, wild, 0)
    assert len(got) == 4 and {e.prompt for e in got} == {"cat", "dog"}
    assert len({(e.prompt, e.seed) for e in got}) == 4 and caplog.text == ""


def test_missing_wildcard_names_the_wildcard_and_folder(wild: Path) -> None:
    p = payload(name="girl", prompt="a __flavour__ cake", wildcard_type="random")
    with pytest.raises(PayloadError) as info:
        expand_payload(p, wild, 0)
    message = str(info.value)
    assert "payload girl" in message and "__flavour__" in message and str(wild) in message
    assert "flavour.txt" in message


def test_missing_wildcard_in_the_negative_prompt(wild: Path) -> None:
    p = payload(prompt="x", negative_prompt="__nope__", wildcard_type="combinatorial")
    with pytest.raises(PayloadError, match="__nope__"):
        expand_payload(p, wild, 0)


def test_wildcard_without_a_folder() -> None:
    p = payload(prompt="__color__", wildcard_type="random")
    with pytest.raises(PayloadError, match="no wildcard folder is set"):
        expand_payload(p, None, 0)


def test_score_weight_and_reverse_scoring_reach_the_expanded_prompts(wild: Path) -> None:
    p = payload(
        prompt="__color__",
        wildcard_type="random",
        n_iter=2,
        score_weight=0.25,
        reverse_scoring=True,
    )
    got = expand_payload(p, wild, 0)
    assert [(e.score_weight, e.reverse_scoring) for e in got] == [(0.25, True)] * 2


# --- writing ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_new_payload_round_trips(tmp_path: Path, suffix: str) -> None:
    p = new_payload(prompt="a cat", seed=3, steps=20, wildcard_type="random", reverse_scoring=True)
    path = write_payload(p, tmp_path / f"cat{suffix}")
    back = load_payload(path)
    assert back.txt2img_fields() == p.txt2img_fields()
    assert (back.wildcard_type, back.reverse_scoring, back.name) == ("random", True, "cat")
    with pytest.raises(OutputExistsError):
        write_payload(p, path)
    write_payload(p.model_copy(update={"steps": 9}), path, force=True)
    assert load_payload(path).steps == 9


def test_new_payload_rejects_bad_values() -> None:
    with pytest.raises(PayloadError, match="steps"):
        new_payload(prompt="x", steps=0)


# --- the shipped examples ---------------------------------------------------------------
def test_example_payloads_load_and_expand() -> None:
    folder = REPO_ROOT / "payloads"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".yaml"))
    payloads = load_payloads(files)
    names = {p.name for p in payloads}
    assert {"minimal", "portraits", "landscapes"} <= names
    minimal = next(p for p in payloads if p.name == "minimal")
    assert (minimal.width, minimal.height, minimal.images_per_call) == (512, 512, 1)
    prompts = expand_payloads(payloads, folder / "wildcards", 0)
    assert all("__" not in e.prompt for e in prompts)
    assert len([e for e in prompts if e.payload_name == "portraits"]) > 1


@pytest.mark.parametrize(
    ("wildcard_type", "prompt"),
    [("random", "a {b|c"), ("combinatorial", "a {b|c"), ("jinja2", "{% for x in %}")],
)
def test_template_syntax_errors_are_payload_errors(wildcard_type: str, prompt: str) -> None:
    p = payload(name="bad", prompt=prompt, wildcard_type=wildcard_type)
    with pytest.raises(PayloadError, match=f"payload bad: cannot expand {wildcard_type} wildcards"):
        expand_payload(p, None, 0)


def test_expansion_is_the_same_in_another_process(tmp_path: Path, wild: Path) -> None:
    """Nothing may depend on hash randomisation or process state (a resumed run re-expands)."""
    path = write_json(
        tmp_path / "p.json",
        {
            "prompt": "__color__ __sub/animal__ {a|b|c}",
            "negative_prompt": "{x|y}",
            "wildcard_type": "random",
            "n_iter": 5,
            "seed": -1,
        },
    )
    script = (
        "import json, sys; from pathlib import Path; "
        "from autombw_cli.payloads import load_payload, expand_payload; "
        "es = expand_payload(load_payload(sys.argv[1]), Path(sys.argv[2]), 11); "
        "print(json.dumps([e.txt2img_body() for e in es]))"
    )
    runs = []
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", script, str(path), str(wild)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        runs.append(json.loads(out))
    here = [e.txt2img_body() for e in expand_payload(load_payload(path), wild, 11)]
    assert runs[0] == runs[1] == here


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_warnings_on_a_terminal_go_through_rich_and_plain_elsewhere(wild: Path) -> None:
    """ARCHITECTURE.md: rich's handler on a TTY, plain lines otherwise (pipes, log files)."""
    import pty

    path = write_json(
        wild.parent / "few.json",
        {"prompt": "__sub/animal__", "wildcard_type": "random", "n_iter": 4},
    )
    args = [sys.executable, "-m", "autombw_cli", "payload", "expand", str(path)]
    args += ["--wildcards", str(wild)]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "WARNING autombw_cli.payloads:" in plain.stderr
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    proc = subprocess.run(
        args, stdout=subprocess.DEVNULL, stderr=follower, timeout=120, env=env, check=False
    )
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 65536):
            shown += chunk
    os.close(leader)
    text = shown.decode("utf-8", "replace")
    assert proc.returncode == 0 and "only 2 distinct" in text
    assert "\x1b[" in text and "WARNING autombw_cli.payloads:" not in text  # rich's layout
