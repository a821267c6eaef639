"""The YAML search config: every field is read and changes the loaded value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from autombw_cli.blocks import Arch, layout
from autombw_cli.config import (
    SearchConfig,
    SimulatedInstances,
    WebUIInstance,
    config_json_schema,
    load_config,
)
from autombw_cli.errors import ConfigError
from conftest import REPO_ROOT, SHIPPED_CONFIGS

BASE: dict[str, Any] = {
    "models": {"a": "a.safetensors", "b": "b.safetensors"},
    "instances": {"simulate": 1},
    "payloads": {"files": ["payloads/p.json"]},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "payloads").mkdir()
    (tmp_path / "payloads" / "p.json").write_text('{"prompt": "a cat"}')
    (tmp_path / "payloads" / "q.yaml").write_text("prompt: a dog\n")
    (tmp_path / "wild").mkdir()
    (tmp_path / "models").mkdir()
    for name in ("A.safetensors", "B.safetensors", "ImageReward.pt", "med_config.json"):
        (tmp_path / "models" / name).write_bytes(b"x")
    (tmp_path / "models" / "bert").mkdir()
    (tmp_path / "best.recipe.txt").write_text(
        "modelA=a.safetensors\nmodelB=b.safetensors\nmodelO=o\n" + ",".join(["0.25"] * 27) + "\n"
    )
    (tmp_path / "my-presets.tsv").write_text("MINE\t" + ",".join(["0.75"] * 25) + "\n")
    return tmp_path


def load(project: Path, over: dict | None = None, name: str = "c.yaml") -> SearchConfig:
    path = project / name
    path.write_text(yaml.safe_dump(_merge(BASE, over or {}), sort_keys=False))
    return load_config(path)


def test_defaults(project: Path) -> None:
    cfg = load(project)
    assert cfg.models.output == "autombw-merge"
    assert cfg.models.arch is Arch.SD1
    assert cfg.search.intervals == 10 and cfg.search.grid_intervals == 10
    assert cfg.search.max_evaluations == 270
    assert cfg.search.early_stopping.patience is None  # a run uses its budget
    # the benchmark's choice (BENCHMARKS.md): Optuna's gp for 100 evaluations, then gp and GFO's
    # Bayesian (1000 candidates per ask) taking turns to the end
    assert [p.optimizer for p in cfg.search.passes] == ["gp", "portfolio"]
    assert cfg.search.passes[0].max_evaluations == 100
    assert cfg.search.passes[1].max_evaluations is None
    members = cfg.search.passes[1].settings["members"]
    assert [m["optimizer"] for m in members] == ["gp", "Bayesian"]
    assert members[1]["settings"]["n_candidates"] == 1000
    assert all(p.early_stopping == cfg.search.early_stopping for p in cfg.search.passes)
    assert len(cfg.search.blocks) == 27 and cfg.search.frozen == {}
    assert cfg.outputs.run_dir == project / "runs"
    assert cfg.scorer.name == "imagereward"
    assert cfg.source == project / "c.yaml"
    assert cfg.initial_weights() is None


# (override, getter, expected): each proves its field is read and changes the value.
FIELD_CASES: list[tuple[str, dict, Any, Any]] = [
    ("models.a", {"models": {"a": "x.ckpt"}}, lambda c: c.models.a, "x.ckpt"),
    ("models.b", {"models": {"b": "y.ckpt"}}, lambda c: c.models.b, "y.ckpt"),
    ("models.output", {"models": {"output": "mix"}}, lambda c: c.models.output, "mix"),
    ("models.arch", {"models": {"arch": "sdxl"}}, lambda c: c.models.arch, Arch.SDXL),
    (
        "models.a_file",
        {"models": {"a_file": "models/A.safetensors"}},
        lambda c: c.models.a_file.name,
        "A.safetensors",
    ),
    (
        "models.b_file",
        {"models": {"b_file": "models/B.safetensors"}},
        lambda c: c.models.b_file.name,
        "B.safetensors",
    ),
    ("instances.simulate", {"instances": {"simulate": 3}}, lambda c: c.instances.simulate, 3),
    (
        "instances.arch",
        {"instances": {"simulate": 1, "arch": "sd2"}, "models": {"arch": "sd2"}},
        lambda c: c.instances.arch,
        Arch.SD2,
    ),
    (
        "instances.latency",
        {"instances": {"simulate": 1, "latency": 0.5}},
        lambda c: c.instances.latency,
        0.5,
    ),
    (
        "instances.options",
        {"instances": {"simulate": 1, "options": {"faults": "oom"}}},
        lambda c: c.instances.options,
        {"faults": "oom"},
    ),
    (
        "instances[].url",
        {"instances": [{"url": "http://10.0.0.2:7861/"}]},
        lambda c: c.instances[0].url,
        "http://10.0.0.2:7861",
    ),
    (
        "instances[] string",
        {"instances": ["https://gpu.example.org"]},
        lambda c: c.instances[0].name,
        "gpu.example.org",
    ),
    (
        "instances[].label",
        {"instances": [{"url": "http://h:1", "label": "gpu0"}]},
        lambda c: c.instances[0].name,
        "gpu0",
    ),
    (
        "instances[].auth",
        {"instances": [{"url": "http://h:1", "auth": {"user_env": "U", "password_env": "P"}}]},
        lambda c: (c.instances[0].auth.user_env, c.instances[0].auth.password_env),
        ("U", "P"),
    ),
    (
        "instances[].timeouts",
        {"instances": [{"url": "http://h:1", "timeouts": {"stall": 600, "connect": 2}}]},
        lambda c: (c.instances[0].timeouts.stall, c.instances[0].timeouts.connect),
        (600.0, 2.0),
    ),
    (
        "instances[].retry",
        {"instances": [{"url": "http://h:1", "retry": {"attempts": 5}}]},
        lambda c: c.instances[0].retry.attempts,
        5,
    ),
    (
        "payloads.files",
        {"payloads": {"files": ["payloads/q.yaml"]}},
        lambda c: [p.name for p in c.payloads.files],
        ["q.yaml"],
    ),
    (
        "payloads shorthand list",
        {"payloads": ["payloads/q.yaml", "payloads/p.json"]},
        lambda c: [p.name for p in c.payloads.files],
        ["q.yaml", "p.json"],
    ),
    (
        "payloads folder",
        {"payloads": {"files": ["payloads"]}},
        lambda c: [p.name for p in c.payloads.files],
        ["p.json", "q.yaml"],
    ),
    (
        "payloads.wildcards",
        {"payloads": {"wildcards": "wild"}},
        lambda c: c.payloads.wildcards.name,
        "wild",
    ),
    ("scorer.name", {"scorer": {"name": "sim"}}, lambda c: c.scorer.name, "sim"),
    ("scorer.device", {"scorer": {"device": "cuda:1"}}, lambda c: c.scorer.device, "cuda:1"),
    ("scorer.batch_size", {"scorer": {"batch_size": 4}}, lambda c: c.scorer.batch_size, 4),
    (
        "scorer.paths.checkpoint",
        {"scorer": {"paths": {"checkpoint": "models/ImageReward.pt"}}},
        lambda c: c.scorer.paths.checkpoint.name,
        "ImageReward.pt",
    ),
    (
        "scorer.paths.med_config",
        {"scorer": {"paths": {"med_config": "models/med_config.json"}}},
        lambda c: c.scorer.paths.med_config.name,
        "med_config.json",
    ),
    (
        "scorer.paths.tokenizer",
        {"scorer": {"paths": {"tokenizer": "models/bert"}}},
        lambda c: c.scorer.paths.tokenizer.name,
        "bert",
    ),
    ("scorer.precision", {"scorer": {"precision": "bf16"}}, lambda c: c.scorer.precision, "bf16"),
    ("scorer.compile", {"scorer": {"compile": True}}, lambda c: c.scorer.compile, True),
    (
        "scorer.zscore_warmup",
        {"scorer": {"zscore_warmup": 8}},
        lambda c: c.scorer.zscore_warmup,
        8,
    ),
    (
        "scorer.paths.download_root",
        {"scorer": {"paths": {"download_root": "cache"}}},
        lambda c: c.scorer.paths.download_root.relative_to(c.source.parent),
        Path("cache"),
    ),
    (
        "scorer.paths.clip+head",
        {"scorer": {"paths": {"clip": "models/A.safetensors", "head": "models/B.safetensors"}}},
        lambda c: (c.scorer.paths.clip.name, c.scorer.paths.head.name),
        ("A.safetensors", "B.safetensors"),
    ),
    (
        "scorer.ensemble[].paths",
        {
            "scorer": {
                "name": "ensemble",
                "ensemble": [
                    {"name": "imagereward", "paths": {"checkpoint": "models/ImageReward.pt"}}
                ],
            }
        },
        lambda c: c.scorer.ensemble[0].paths.checkpoint.relative_to(c.source.parent),
        Path("models/ImageReward.pt"),
    ),
    ("scorer.tally", {"scorer": {"tally": "median"}}, lambda c: c.scorer.tally.value, "median"),
    (
        "scorer.tally label",
        {"scorer": {"tally": "A/G Mean", "sigmoid": True}},
        lambda c: c.scorer.tally.value,
        "a/g",
    ),
    ("scorer.sigmoid", {"scorer": {"sigmoid": True}}, lambda c: c.scorer.sigmoid, True),
    (
        "scorer.ensemble",
        {
            "scorer": {
                "name": "ensemble",
                "ensemble": [{"name": "imagereward"}, {"name": "laion", "weight": 0.5}],
            }
        },
        lambda c: [(m.name, m.weight) for m in c.scorer.ensemble],
        [("imagereward", 1.0), ("laion", 0.5)],
    ),
    ("scorer.options", {"scorer": {"options": {"k": 1}}}, lambda c: c.scorer.options, {"k": 1}),
    (
        "search.blocks",
        {"search": {"blocks": ["in0", "M00"], "frozen": {}, "initial": {"weights": "0.5"}}},
        lambda c: c.search.blocks,
        ["IN00", "M00"],
    ),
    (
        "search.frozen",
        {"search": {"frozen": {"time_embed": 0.25}}},
        lambda c: (c.search.frozen, "TIME_EMBED" in c.search.blocks),
        ({"TIME_EMBED": 0.25}, False),
    ),
    (
        "search.clamps",
        {"search": {"clamps": {"in5": [0.2, 0.8]}}},
        lambda c: c.search.clamps,
        {"IN05": (0.2, 0.8)},
    ),
    (
        "search.groups",
        {"search": {"groups": [["out9", "OUT10", "out11"]]}},
        lambda c: c.search.groups,
        [["OUT09", "OUT10", "OUT11"]],
    ),
    ("search.intervals", {"search": {"intervals": 20}}, lambda c: c.search.grid_intervals, 20),
    (
        "search.continuous",
        {"search": {"continuous": True}},
        lambda c: (c.search.continuous, c.search.grid_intervals),
        (True, None),
    ),
    (
        "search.extrapolation",
        {"search": {"extrapolation": True, "frozen": {"OUT": 1.5}}},
        lambda c: (c.search.extrapolation, c.search.frozen["OUT"]),
        (True, 1.5),
    ),
    (
        "search.initial.weights",
        {"search": {"initial": {"weights": "0.3"}}},
        lambda c: c.initial_weights()["OUT05"],
        0.3,
    ),
    (
        "search.initial.weights list",
        {"search": {"initial": {"weights": [0.1] * 12 + [0.2] + [0.3] * 12 + [0.4, 0.5]}}},
        lambda c: (c.initial_weights()["M00"], c.initial_weights()["TIME_EMBED"]),
        (0.2, 0.5),
    ),
    (
        "search.initial.order",
        {
            "search": {
                "initial": {
                    "weights": [0.1] * 12 + [0.2, 0.9] + [0.3] * 12 + [0.5],
                    "order": "nat",
                }
            }
        },
        lambda c: (c.initial_weights()["OUT"], c.initial_weights()["TIME_EMBED"]),
        (0.9, 0.5),
    ),
    (
        "search.initial.recipe",
        {"search": {"initial": {"recipe": "best.recipe.txt"}}},
        lambda c: c.initial_weights()["IN03"],
        0.25,
    ),
    (
        "search.initial.preset",
        {"search": {"initial": {"preset": "flat_75"}}},
        lambda c: c.initial_weights()["M00"],
        0.75,
    ),
    (
        "search.initial.presets_file",
        {"search": {"initial": {"preset": "MINE", "presets_file": "my-presets.tsv"}}},
        lambda c: c.initial_weights()["OUT"],
        0.75,
    ),
    (
        "search.passes",
        {"search": {"passes": ["HillClimbingOptimizer", {"optimizer": "cmaes"}]}},
        lambda c: [p.optimizer for p in c.search.passes],
        ["HillClimbing", "cmaes"],
    ),
    (
        "search.passes[].settings",
        {"search": {"passes": [{"optimizer": "HillClimbing", "settings": {"epsilon": 0.01}}]}},
        lambda c: c.search.passes[0].settings["epsilon"],
        0.01,
    ),
    (
        "search.passes[].max_evaluations",
        {"search": {"passes": [{"max_evaluations": 12}]}},
        lambda c: c.search.passes[0].max_evaluations,
        12,
    ),
    (
        "search.passes[].early_stopping",
        {"search": {"passes": [{"early_stopping": {"patience": 5}}]}},
        lambda c: c.search.passes[0].early_stopping.patience,
        5,
    ),
    (
        "search.early_stopping.patience",
        {"search": {"early_stopping": {"patience": 9}}},
        lambda c: c.search.passes[-1].early_stopping.patience,
        9,
    ),
    (
        "search.early_stopping true",
        {"search": {"early_stopping": True}},
        lambda c: c.search.passes[-1].early_stopping.patience,
        27,
    ),
    (
        "search.early_stopping.min_delta_abs",
        {"search": {"early_stopping": {"min_delta_abs": 0.01}}},
        lambda c: c.search.early_stopping.min_delta_abs,
        0.01,
    ),
    (
        "search.early_stopping.min_delta_rel",
        {"search": {"early_stopping": {"min_delta_rel": 0.02}}},
        lambda c: c.search.passes[-1].early_stopping.min_delta_rel,
        0.02,
    ),
    (
        "search.max_evaluations",
        {"search": {"max_evaluations": 60}},
        lambda c: c.search.max_evaluations,
        60,
    ),
    ("search.max_time", {"search": {"max_time": "1h30m"}}, lambda c: c.search.max_time, 5400.0),
    ("search.max_time seconds", {"search": {"max_time": 90}}, lambda c: c.search.max_time, 90),
    ("search.seed", {"search": {"seed": 42}}, lambda c: c.search.seed, 42),
    (
        "search.scheduler",
        {
            "search": {
                "scheduler": {
                    "max_attempts": 5,
                    "park_after": 2,
                    "all_down_after": "5m",
                    "probe_backoff_max": 10,
                }
            }
        },
        lambda c: c.search.scheduler.model_dump(),
        {"max_attempts": 5, "park_after": 2, "all_down_after": 300.0, "probe_backoff_max": 10},
    ),
    (
        "outputs.run_dir",
        {"outputs": {"run_dir": "out/runs"}},
        lambda c: c.outputs.run_dir.relative_to(c.source.parent),
        Path("out/runs"),
    ),
    ("outputs.run_name", {"outputs": {"run_name": "r1"}}, lambda c: c.outputs.run_name, "r1"),
    (
        "outputs.save_images",
        {"outputs": {"save_images": "all"}},
        lambda c: c.outputs.save_images,
        "all",
    ),
    (
        "outputs.save_images bool",
        {"outputs": {"save_images": False}},
        lambda c: c.outputs.save_images,
        "none",
    ),
    (
        "outputs.image_format",
        {"outputs": {"image_format": "webp"}},
        lambda c: c.outputs.image_format,
        "webp",
    ),
    (
        "outputs.final_merge",
        {"outputs": {"final_merge": False}},
        lambda c: c.outputs.final_merge,
        False,
    ),
    (
        "outputs.merge_via",
        {
            "outputs": {"merge_via": "offline"},
            "models": {"a_file": "models/A.safetensors", "b_file": "models/B.safetensors"},
        },
        lambda c: c.outputs.merge_via,
        "offline",
    ),
    ("outputs.format", {"outputs": {"format": "ckpt"}}, lambda c: c.outputs.format, "ckpt"),
    ("outputs.dtype", {"outputs": {"dtype": "bf16"}}, lambda c: c.outputs.dtype, "bf16"),
]


@pytest.mark.parametrize(
    ("override", "get", "expected"), [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES]
)
def test_field_is_read(project: Path, override: dict, get: Any, expected: Any) -> None:
    default = load(project, name="default.yaml")
    try:
        before = get(default)
    except (AttributeError, TypeError, KeyError, IndexError):  # e.g. a_file is None
        before = object()
    assert before != expected, "the case must change the default value"
    assert get(load(project, override)) == expected


def test_instance_list_and_simulated_forms(project: Path) -> None:
    sim = load(project)
    assert sim.simulated and isinstance(sim.instances, SimulatedInstances)
    assert sim.instances.arch is Arch.SD1  # resolved from models.arch
    real = load(project, {"instances": ["http://127.0.0.1:7860", {"url": "http://127.0.0.1:7861"}]})
    assert not real.simulated
    assert all(isinstance(i, WebUIInstance) for i in real.instances)
    assert [i.name for i in real.instances] == ["127.0.0.1:7860", "127.0.0.1:7861"]


def test_relative_paths_resolve_against_the_config_folder(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = project / "configs"
    sub.mkdir()
    monkeypatch.chdir(sub)  # a different cwd must not matter
    cfg = load(
        project, {"payloads": {"files": ["payloads/p.json"], "wildcards": "wild"}}, name="c.yaml"
    )
    assert cfg.payloads.files == [project / "payloads" / "p.json"]
    assert cfg.payloads.wildcards == project / "wild"
    (sub / "c.yaml").write_text(yaml.safe_dump(_merge(BASE, {"payloads": ["../payloads/p.json"]})))
    assert load_config("c.yaml").payloads.files == [project / "payloads" / "p.json"]


def test_frozen_and_blocks_cover_every_slot(project: Path) -> None:
    cfg = load(
        project,
        {
            "search": {
                "blocks": ["IN00", "IN01"],
                "frozen": {"OUT": 1},
                "initial": {"weights": "0.4"},
            }
        },
    )
    assert cfg.search.blocks == ["IN00", "IN01"]
    assert set(cfg.search.frozen) | set(cfg.search.blocks) == set(cfg.initial_weights().values)
    assert cfg.search.frozen["OUT"] == 1.0 and cfg.search.frozen["M00"] == 0.4


def test_sdxl_block_names(project: Path) -> None:
    cfg = load(project, {"models": {"arch": "sdxl"}, "search": {"frozen": {"label_emb": 0}}})
    assert cfg.search.frozen == {"LABEL_EMB": 0.0}
    assert len(cfg.search.blocks) == 21


def test_config_is_frozen(project: Path) -> None:
    cfg = load(project)
    with pytest.raises(Exception, match="frozen"):
        cfg.search.seed = 3  # type: ignore[misc]


def test_redacted_dump_holds_env_names_not_secrets(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A1111_USER", "alice")
    monkeypatch.setenv("A1111_PASSWORD", "hunter2")
    cfg = load(
        project,
        {
            "instances": [
                {
                    "url": "http://h:7860",
                    "auth": {"user_env": "A1111_USER", "password_env": "A1111_PASSWORD"},
                }
            ],
            "scorer": {
                "options": {"api_key": "sk-123", "hub_token": "tok", "size": "x", "passes": "y"}
            },
        },
    )
    assert cfg.instances[0].auth.resolve(instance="h") == ("alice", "hunter2")
    text = cfg.redacted_yaml()
    assert "hunter2" not in text and "alice" not in text
    assert "A1111_PASSWORD" in text
    dump = cfg.redacted_dump()
    assert dump["scorer"]["options"] == {
        "api_key": "***",
        "hub_token": "***",
        "size": "x",
        "passes": "y",
    }
    # the dump is itself a loadable config (modulo redaction)
    again = project / "again.yaml"
    again.write_text(text)
    assert load_config(again).search == cfg.search


def test_auth_resolve_names_the_missing_variable(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_USER", raising=False)
    monkeypatch.setenv("NOPE_PASS", "x")
    cfg = load(
        project,
        {
            "instances": [
                {
                    "url": "http://h:1",
                    "label": "gpu0",
                    "auth": {"user_env": "NOPE_USER", "password_env": "NOPE_PASS"},
                }
            ]
        },
    )
    with pytest.raises(ConfigError, match=r"gpu0: .*NOPE_USER"):
        cfg.instances[0].auth.resolve(instance="gpu0")
    assert any("NOPE_USER" in w for w in cfg.warnings())


def test_budget_warning(project: Path) -> None:
    cfg = load(
        project,
        {
            "search": {
                "max_evaluations": 10,
                "passes": [{"max_evaluations": 8}, {"max_evaluations": 8}],
            }
        },
    )
    assert any("add up to 16" in w for w in cfg.warnings())
    assert load(project).warnings() == []


def test_check_paths_false_skips_existence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_merge(BASE, {"payloads": ["nowhere.json"]})))
    cfg = load_config(path, check_paths=False)
    assert cfg.payloads.files == [tmp_path / "nowhere.json"]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_example_configs_load(name: str) -> None:
    cfg = load_config(REPO_ROOT / "configs" / name)
    assert cfg.payloads.files and all(p.is_file() for p in cfg.payloads.files)
    if name == "quickstart.yaml":
        assert cfg.simulated and cfg.instances.simulate == 2
        assert cfg.scorer.name == "sim" and cfg.search.max_evaluations <= 80
    if name == "four-gpus.yaml":
        assert len(cfg.instances) == 4 and len({i.url for i in cfg.instances}) == 4
    if name == "sdxl.yaml":
        assert cfg.models.arch is Arch.SDXL and "LABEL_EMB" in cfg.search.frozen
    if name == "add-difference-sim.yaml":
        assert cfg.models.formula.value == "add_difference" and cfg.models.c == "simC.safetensors"
        assert cfg.simulated and cfg.scorer.options == {"formula": "add_difference"}
    if name == "chain-sim.yaml":
        assert cfg.simulated and cfg.chain and cfg.chain[0].b == "simC.safetensors"


def test_json_schema_describes_every_section() -> None:
    schema = config_json_schema()
    assert set(schema["properties"]) == {
        "models",
        "instances",
        "payloads",
        "scorer",
        "search",
        "outputs",
        "chain",
    }
    assert set(schema["required"]) == {"models", "instances", "payloads"}
    assert schema["additionalProperties"] is False


@settings(max_examples=60, deadline=None)
@given(
    arch=st.sampled_from(list(Arch)),
    data=st.data(),
)
def test_every_slot_is_searched_or_frozen_exactly_once(arch: Arch, data: st.DataObject) -> None:
    slots = layout(arch).slots
    frozen = data.draw(st.dictionaries(st.sampled_from(slots), st.sampled_from([0.0, 0.5, 1.0])))
    rest = [s for s in slots if s not in frozen]
    some = st.lists(st.sampled_from(rest), unique=True) if rest else st.just([])  # all frozen
    blocks = data.draw(st.one_of(st.just("all"), some))
    initial = data.draw(st.sampled_from([None, "0.3"]))
    raw = _merge(
        BASE,
        {
            "models": {"arch": arch.value},
            "search": {"blocks": [b.lower() for b in blocks] if blocks != "all" else "all"}
            | {"frozen": frozen}
            | ({"initial": {"weights": initial}} if initial else {}),
        },
    )
    searched = rest if blocks == "all" else blocks
    try:
        cfg = SearchConfig.model_validate(raw, context={"check_paths": False})
    except ValidationError as exc:
        text = str(exc)
        assert ("neither searched nor frozen" in text and initial is None) or (
            "no block left to search" in text and not searched
        ), text
        return
    assert sorted(cfg.search.blocks) == sorted(searched)
    assert set(cfg.search.blocks).isdisjoint(cfg.search.frozen)
    assert set(cfg.search.blocks) | set(cfg.search.frozen) == set(slots)
    for slot, value in cfg.search.frozen.items():
        assert value == frozen.get(slot, 0.3)
    # the resolved form loads back to the same search section
    again = SearchConfig.model_validate(
        yaml.safe_load(cfg.redacted_yaml()), context={"check_paths": False}
    )
    assert again.search == cfg.search


def test_a_config_and_payload_saved_on_windows_load(tmp_path: Path) -> None:
    """Notepad writes CRLF line ends and often a UTF-8 BOM; both files must load as written."""
    from autombw_cli.config import load_config
    from autombw_cli.payloads import load_payload
    from search_helpers import write_search_config

    path = write_search_config(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    payload = tmp_path / "apple.json"
    payload.write_bytes(b"\xef\xbb\xbf" + payload.read_bytes().replace(b",", b",\r\n"))
    cfg = load_config(path)
    assert cfg.search.max_evaluations == 12
    assert load_payload(payload).prompt == "a photo of an apple"


def test_pruning_with_gaussian_process_passes_warns(project: Path) -> None:
    """Measured (BENCHMARKS.md): with the default passes (gp, then the gp/Bayesian portfolio;
    before them gp, then Bayesian) pruning made the best worse on noisy scores, so a config
    that combines them is told; with cmaes it was neutral."""
    default_passes = load(project, {"search": {"pruning": {"after": 2}}}).warnings()
    assert len(default_passes) == 1
    assert "search.pruning with gp and Bayesian passes" in default_passes[0]
    portfolio = {"search": {"pruning": 2, "passes": [{"optimizer": "portfolio"}]}}
    assert "gp and Bayesian passes" in load(project, portfolio).warnings()[0]
    cmaes = {"search": {"pruning": 2, "passes": [{"optimizer": "cmaes"}]}}
    assert load(project, cmaes).warnings() == []
    assert load(project, {"search": {"pruning": False}}).warnings() == []


def test_a_long_search_ending_in_a_gaussian_process_is_told_to_end_cheaply(project: Path) -> None:
    """Measured (BENCHMARKS.md "Ask cost"): gp and Bayesian refit on the whole history every
    ask, seconds per ask past 1000 evaluations. A budget past that whose pass running there is
    one of them is told; a cheap pass there, or a budget within it, is not."""
    week = {"search": {"max_evaluations": 3000}}
    (warning,) = load(project, week).warnings()
    assert "past evaluation 1000 uses gp and Bayesian" in warning
    assert "{optimizer: HillClimbing}" in warning
    cheap_end = [
        {"optimizer": "gp", "max_evaluations": 100},
        {"optimizer": "portfolio", "max_evaluations": 900},
        {"optimizer": "HillClimbing"},
    ]
    cheap = {"search": {"max_evaluations": 3000, "passes": cheap_end}}
    assert load(project, cheap).warnings() == []
    late_gp = [{"optimizer": "cmaes", "max_evaluations": 1100}, {"optimizer": "gp"}]
    assert load(project, {"search": {"max_evaluations": 1200, "passes": late_gp}}).warnings() == []
    late_gp[0]["max_evaluations"] = 600
    (warning,) = load(project, {"search": {"max_evaluations": 1200, "passes": late_gp}}).warnings()
    assert "uses gp," in warning
    assert load(project, {"search": {"max_evaluations": 1000}}).warnings() == []
