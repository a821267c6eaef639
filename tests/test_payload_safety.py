"""Payload files come from strangers: nothing in one may run code or exhaust memory.

- ``wildcard_type: jinja2`` templates render in a sandbox (jinja2's ImmutableSandboxedEnvironment,
  bounded operations, a child process with time and memory limits). Every escape below would
  create a marker file if it ran; each is refused with a PayloadError naming the payload file and
  the prompt, through the library and through the CLI, and the marker stays absent.
- dynamicprompts' jinja2 features keep working (tests/test_payloads.py has more).
- A wildcard that refers back to itself (a -> a, a -> b -> a) or nests too deep is refused by name
  instead of a RecursionError.
- YAML alias bombs in payload files are refused (the config side: tests/test_yaml_bombs.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autombw_cli import payloads as payloads_mod
from autombw_cli.errors import PayloadError
from autombw_cli.payloads import expand_payload, load_payload

_IMPORT_OS = "__builtins__.__import__('os').system('touch {m}')"

# (id, template) -- {m} is the marker path; each would create it without the sandbox.
ESCAPES = [
    ("cycler-globals", "{{ cycler.__init__.__globals__.os.system('touch {m}') }}"),
    ("cycler-builtins", "{{ cycler.__init__.__globals__." + _IMPORT_OS + " }}"),
    ("lipsum-globals", "{{ lipsum.__globals__." + _IMPORT_OS + " }}"),
    ("joiner-globals", "{{ joiner.__init__.__globals__." + _IMPORT_OS + " }}"),
    ("namespace-globals", "{{ namespace.__init__.__globals__." + _IMPORT_OS + " }}"),
    ("self-globals", "{{ self.__init__.__globals__." + _IMPORT_OS + " }}"),
    (
        "subclasses-wrap-close",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == '_wrap_close' %}{{ c.__init__.__globals__['system']('touch {m}') }}"
        "{% endif %}{% endfor %}",
    ),
    ("str-class", "{{ ''.__class__.__base__.__subclasses__() }} {{ 'touch {m}' }}"),
    ("format-string", "{{ '{0.__class__.__mro__}'.format(cycler) }} {{ 'touch {m}' }}"),
    ("function-globals", "{{ choice.__globals__['random'] }} {{ 'touch {m}' }}"),
    ("generator-internals", "{{ wildcard.__closure__ }} {{ 'touch {m}' }}"),
]

# Things that would exhaust memory or time: refused as too large.
BOMBS = [
    ("huge-range", "{% for i in range(10**9) %}x{% endfor %}"),
    ("string-times", "{{ 'a' * 10**10 }}"),
    ("list-times", "{{ ([1] * 10**9)|length }}"),
    ("power", "{{ 2 ** (10 ** 10) }}"),
    (
        "concat-doubling",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
    ),
    (
        "replace-doubling",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s|replace('a', 'aa') %}{% endfor %}{{ ns.s|length }}",
    ),
    ("printf-width", "{{ '%0999999999d' % 1 }}"),
    ("format-width", "{{ '{:>9999999999}'.format(1) }}"),
    ("ljust", "{{ 'x'.ljust(10**10) }}"),
    ("center-filter", "{{ 'x'|center(10**10) }}"),
    ("join-method", "{{ ('x' * 90000).join(['a'] * 90000) }}"),
    ("permutations", "{{ permutations(range(20), 20)|length }}"),
    (
        "nested-output",
        "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
    ),
]


def _payload_file(folder: Path, prompt: str, **fields: object) -> Path:
    path = folder / "shared.json"
    data = {"prompt": prompt, "wildcard_type": "jinja2", "n_iter": 1, **fields}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("case", "template"), ESCAPES, ids=[c for c, _ in ESCAPES])
def test_jinja_escapes_are_refused_and_run_nothing(
    tmp_path: Path, case: str, template: str
) -> None:
    marker = tmp_path / "pwned"
    path = _payload_file(tmp_path, template.replace("{m}", str(marker)))
    with pytest.raises(PayloadError) as info:
        expand_payload(load_payload(path), None, 0)
    message = info.value.message
    assert str(path) in message and "prompt" in message, message
    assert "sandbox forbids" in message or "cannot expand" in message, message
    assert not marker.exists(), f"{case}: the template ran code"


@pytest.mark.parametrize(("case", "template"), BOMBS, ids=[c for c, _ in BOMBS])
def test_jinja_resource_bombs_are_refused(tmp_path: Path, case: str, template: str) -> None:
    path = _payload_file(tmp_path, template)
    with pytest.raises(PayloadError, match="is too large; refused") as info:
        expand_payload(load_payload(path), None, 0)
    assert str(path) in info.value.message


def test_a_template_that_never_ends_is_stopped(tmp_path: Path, monkeypatch) -> None:
    """Empty loops use no memory, only time: the child process is stopped at the limit."""
    monkeypatch.setattr(payloads_mod, "JINJA_TIMEOUT_S", 3.0)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    path = _payload_file(tmp_path, loops)
    with pytest.raises(PayloadError, match="took longer than 3 s"):
        expand_payload(load_payload(path), None, 0)


def test_flask_style_globals_are_not_there(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in ("config", "request", "url_for", "get_flashed_messages"):
        t = "{{ " + name + ".__class__.__init__.__globals__." + _IMPORT_OS + " }}"
        path = _payload_file(tmp_path, t.replace("{m}", str(marker)))
        with pytest.raises(PayloadError, match=r"shared\.json"):
            expand_payload(load_payload(path), None, 0)
    assert not marker.exists()


def test_the_escape_in_a_negative_prompt_is_named(tmp_path: Path) -> None:
    path = _payload_file(tmp_path, "a cat", negative_prompt="{{ ''.__class__ }}")
    with pytest.raises(PayloadError, match="negative_prompt") as info:
        expand_payload(load_payload(path), None, 0)
    assert "''.__class__" in info.value.message


@pytest.mark.slow
def test_cli_payload_expand_refuses_the_escape(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    template = ESCAPES[0][1].replace("{m}", str(marker))
    _payload_file(tmp_path, template)
    proc = subprocess.run(
        [sys.executable, "-m", "autombw_cli", "payload", "expand", "shared.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr + proc.stdout
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("error: shared.json") and "__globals__" in first, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "payload expand ran the template's code"


def test_sandboxed_jinja_keeps_dynamicprompts_features(tmp_path: Path) -> None:
    wild = tmp_path / "wildcards"
    wild.mkdir()
    (wild / "color.txt").write_text("red\nblue\n")
    template = (
        "{% for c in wildcard('color') %}{% prompt %}{{ c }} "
        "{{ choice('x', 'y') }} {{ weighted_choice(('w', 1), ('w', 2)) }} "
        "{{ permutations(['a', 'b'], 2)|length }} {{ random_sample('{p|p}') }} "
        "{{ all_combinations('{k|l}')|join('+') }} {{ (randint(1, 9) > 0) }} "
        "{{ (random() < 1) }} {{ 'ab' ~ 'cd' }} {{ 'n' * 2 }}{% endprompt %}{% endfor %}"
    )
    path = _payload_file(tmp_path, template, n_iter=1)
    got = [e.prompt for e in expand_payload(load_payload(path), wild, 0)]
    assert sorted(p.split()[0] for p in got) == ["blue", "red"]
    for prompt in got:
        words = prompt.split()
        assert words[1] in ("x", "y")
        assert words[2:] == ["w", "2", "p", "k+l", "True", "True", "abcd", "nn"]


# --- recursive wildcards ------------------------------------------------------------------
@pytest.mark.parametrize("wildcard_type", ["random", "combinatorial"])
def test_a_wildcard_that_uses_itself_is_refused_by_name(tmp_path: Path, wildcard_type: str) -> None:
    wild = tmp_path / "wildcards"
    wild.mkdir()
    (wild / "a.txt").write_text("plain\nmore __a__\n")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "x __a__", "wildcard_type": wildcard_type}))
    with pytest.raises(PayloadError, match="refers back to itself") as info:
        expand_payload(load_payload(path), wild, 0)
    assert str(wild / "a.txt") in info.value.message and str(path) in info.value.message


def test_a_wildcard_cycle_through_another_file_is_refused(tmp_path: Path) -> None:
    wild = tmp_path / "wildcards"
    wild.mkdir()
    (wild / "a.txt").write_text("__b__\n")
    (wild / "b.txt").write_text("{x|__a__}\n")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "__a__", "wildcard_type": "random"}))
    with pytest.raises(PayloadError, match=r"__a__ -> __b__ -> __a__") as info:
        expand_payload(load_payload(path), wild, 0)
    assert str(wild / "b.txt") in info.value.message


def test_a_jinja_wildcard_call_into_a_cycle_is_refused(tmp_path: Path) -> None:
    wild = tmp_path / "wildcards"
    wild.mkdir()
    (wild / "a.txt").write_text("__a__\n")
    path = _payload_file(tmp_path, "{{ wildcard('a')|join(',') }}")
    with pytest.raises(PayloadError, match="refers back to itself"):
        expand_payload(load_payload(path), wild, 0)


def test_deep_but_finite_nesting_is_refused_past_the_limit(tmp_path: Path) -> None:
    wild = tmp_path / "wildcards"
    wild.mkdir()
    depth = payloads_mod.MAX_WILDCARD_DEPTH + 5
    for i in range(depth):
        (wild / f"w{i}.txt").write_text(f"__w{i + 1}__\n" if i + 1 < depth else "end\n")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"prompt": "__w0__", "wildcard_type": "combinatorial"}))
    with pytest.raises(PayloadError, match="nest more than"):
        expand_payload(load_payload(path), wild, 0)
    # a few levels are fine
    path.write_text(json.dumps({"prompt": f"__w{depth - 3}__", "wildcard_type": "random"}))
    [e] = expand_payload(load_payload(path), wild, 0)
    assert e.prompt == "end"


@pytest.mark.slow
def test_cli_recursive_wildcard_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "wildcards").mkdir()
    (tmp_path / "wildcards" / "a.txt").write_text("__a__ x\n")
    (tmp_path / "p.json").write_text(json.dumps({"prompt": "__a__", "wildcard_type": "random"}))
    proc = subprocess.run(
        [sys.executable, "-m", "autombw_cli", "payload", "expand", "p.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: p.json") and "a.txt" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr


# --- YAML alias bombs in payload files ------------------------------------------------------
def test_a_yaml_alias_bomb_payload_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append("prompt: x\nstyles: *a9")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PayloadError, match=r"bomb\.yaml.*alias"):
        load_payload(path)
