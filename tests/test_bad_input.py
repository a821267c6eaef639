"""Bad input, table-driven, as a user meets it: each case runs the real CLI in a subprocess
(``sys.executable -m autombw_cli``) in a scratch folder and checks

- the documented exit code (README: 2 config/weights/options, 3 WebUI, 4 checkpoints, 6 unreadable
  source/journal),
- that the first stderr line is an ``error:`` line naming what is wrong and where (file, line,
  field, instance),
- that nothing was written or overwritten (the folder is snapshotted before and after).

Parser fuzzing (weights strings, recipes, CSVs, logs) lives in tests/test_recover_fuzz.py and
friends; config field errors in depth in tests/test_config_errors.py.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from search_helpers import write_search_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, str], list[str]]  # (folder, not-a-webui url) -> CLI args
    exit_code: int
    names: tuple[str, ...]  # every one must appear in the first stderr line
    lines: int = 1  # a preflight lists its problems under a one-line header: look at 2 lines
    error_line: bool = True  # `doctor` reports in a table on stdout, not as an error


# --- setups -----------------------------------------------------------------------------------
def _config(folder: Path, *, search: str = "", instances: str | None = None, **kw: str) -> Path:
    path = write_search_config(
        folder,
        instances=instances or "[{url: 'http://127.0.0.1:7860', label: gpu0}]",
        extra_search=search,
        **kw,
    )
    return path


def _replace(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    return path


def malformed_yaml(d: Path, url: str) -> list[str]:
    (d / "bad.yaml").write_text("models: {a: x.safetensors\n  b: [y\nsearch: {\n")
    return ["search", "bad.yaml"]


def unknown_key(d: Path, url: str) -> list[str]:
    _replace(_config(d), "scorer:", "scorrer: {}\nscorer:")
    return ["search", "search.yaml"]


def misspelled_nested_key(d: Path, url: str) -> list[str]:
    _config(d, passes="[{optimizr: tpe}]")
    return ["search", "search.yaml"]


def wrong_type(d: Path, url: str) -> list[str]:
    _replace(_config(d), "max_evaluations: 12", "max_evaluations: lots")
    return ["search", "search.yaml"]


def out_of_range_weights(d: Path, url: str) -> list[str]:
    _config(d, search="  initial: {weights: '1.5'}")
    return ["search", "search.yaml"]


def wrong_weight_count(d: Path, url: str) -> list[str]:
    _config(d, search="  initial: {weights: '0.1,0.2,0.3'}")
    return ["search", "search.yaml"]


def missing_config(d: Path, url: str) -> list[str]:
    return ["search", "nothere.yaml"]


def config_is_a_folder(d: Path, url: str) -> list[str]:
    (d / "folder.yaml").mkdir()
    return ["search", "folder.yaml"]


def missing_payload(d: Path, url: str) -> list[str]:
    _config(d)
    (d / "apple.json").unlink()
    return ["search", "search.yaml"]


def broken_payload_json(d: Path, url: str) -> list[str]:
    _config(d)
    (d / "apple.json").write_text('{"prompt": "an apple",\n "steps": 4,,\n}')
    return ["search", "search.yaml"]


def missing_wildcard(d: Path, url: str) -> list[str]:
    _config(d)
    (d / "wildcards").mkdir()
    payload = {"prompt": "a photo of __nosuchcard__", "wildcard_type": "random", "n_iter": 2}
    (d / "apple.json").write_text(json.dumps(payload))
    _replace(
        d / "search.yaml",
        "payloads: {files: [apple.json]}",
        "payloads: {files: [apple.json], wildcards: wildcards}",
    )
    return ["search", "search.yaml"]


def url_without_scheme(d: Path, url: str) -> list[str]:
    _config(d, instances="[{url: '127.0.0.1:7860', label: gpu0}]")
    return ["search", "search.yaml"]


def url_bad_port(d: Path, url: str) -> list[str]:
    _config(d, instances="[{url: 'http://127.0.0.1:99999', label: gpu0}]")
    return ["search", "search.yaml"]


def not_a_webui_404(d: Path, url: str) -> list[str]:
    _config(d, instances=f"[{{url: '{url}/404', label: plain}}]")
    return ["search", "search.yaml"]


def not_a_webui_html(d: Path, url: str) -> list[str]:
    _config(d, instances=f"[{{url: '{url}/html', label: plain}}]")
    return ["search", "search.yaml"]


def doctor_not_a_webui(d: Path, url: str) -> list[str]:
    _config(d, instances=f"[{{url: '{url}/html', label: plain}}]")
    return ["doctor", "search.yaml"]


def doctor_wrong_port(d: Path, url: str) -> list[str]:
    _config(d, instances="[{url: 'http://127.0.0.1:9', label: gpu0}]")
    return ["doctor", "search.yaml"]


def recover_missing(d: Path, url: str) -> list[str]:
    return ["recover", "history.csv"]


def recover_truncated_history(d: Path, url: str) -> list[str]:
    header = "number,pass,state,timestamp,worker,merge_id,score," + ",".join(
        [f"IN{i:02d}" for i in range(12)]
        + ["M00"]
        + [f"OUT{i:02d}" for i in range(12)]
        + ["OUT", "TIME_EMBED"]
    )
    row = "1,1,complete,2026-01-01T00:00:00+00:00,gpu0,abc,0.5," + ",".join(["0.5"] * 27)
    short = "2,1,complete,2026-01-01T00:00:01+00:00,gpu0,abd,0.6,0.5,0.5"
    (d / "history.csv").write_text(f"{header}\n{row}\n{short}\n{row.replace('1,', '3,', 1)}\n")
    return ["recover", "history.csv"]


def recover_corrupt_mbwrt_csv(d: Path, url: str) -> list[str]:
    lines = [",".join(str(i) for i in range(27)) + ",score"]
    lines.append(",".join(["0.5"] * 27) + ",0.9")
    lines.append(",".join(["0.5"] * 26) + ",oops,0.8")
    (d / "history.csv").write_text("\n".join(lines) + "\n")
    return ["recover", "history.csv", "--kind", "mbwrt-csv"]


def recover_log_without_evaluation(d: Path, url: str) -> list[str]:
    (d / "console.log").write_text("Startup time: 12.3s\ntestweights: 0.1,0.2,0.3\n")
    return ["recover", "console.log", "--kind", "log"]


def recover_binary(d: Path, url: str) -> list[str]:
    (d / "history.csv").write_bytes(bytes(range(256)) * 4)
    return ["recover", "history.csv"]


def recover_dev_zero(d: Path, url: str) -> list[str]:
    return ["recover", "/dev/zero"]  # endless: must be refused, not read into memory


def recover_endless_line(d: Path, url: str) -> list[str]:
    (d / "console.log").write_bytes(b"testweights: " + b"0.5," * 600_000)  # 2.4 MB, no newline
    return ["recover", "console.log"]


@functools.cache
def _tiny_original(arch: str, seed: int) -> Path:
    """One tiny synthetic checkpoint per (arch, seed) for the whole session, copied per case."""
    from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="autombw-bad-input-"))
    return write_checkpoint(
        folder / f"{arch}-{seed}.safetensors", random_state_dict(arch, "tiny", seed)
    )


def _tiny(d: Path, name: str, arch: str, seed: int) -> Path:
    return Path(shutil.copyfile(_tiny_original(arch, seed), d / name))


def merge_mismatched(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    _tiny(d, "b.safetensors", "sdxl", 2)
    return ["merge", "a.safetensors", "b.safetensors", "--weights", "0.5", "-o", "out.safetensors"]


def merge_not_a_checkpoint(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    (d / "b.safetensors").write_text("this is a text file, not a model\n")
    return ["merge", "a.safetensors", "b.safetensors", "--weights", "0.5", "-o", "out.safetensors"]


def merge_missing_file(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    return ["merge", "a.safetensors", "nothere.safetensors", "--weights", "0.5", "-o", "out"]


def merge_out_of_range(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    _tiny(d, "b.safetensors", "sd1", 2)
    return ["merge", "a.safetensors", "b.safetensors", "--weights", "1.5", "-o", "out"]


def merge_wrong_count(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    _tiny(d, "b.safetensors", "sd1", 2)
    return ["merge", "a.safetensors", "b.safetensors", "--weights", "0.1,0.2,0.3", "-o", "out"]


def merge_over_existing(d: Path, url: str) -> list[str]:
    _tiny(d, "a.safetensors", "sd1", 1)
    _tiny(d, "b.safetensors", "sd1", 2)
    (d / "out.safetensors").write_bytes(b"precious")
    return ["merge", "a.safetensors", "b.safetensors", "--weights", "0.5", "-o", "out.safetensors"]


def weights_wrong_count(d: Path, url: str) -> list[str]:
    return ["weights", "convert", "0.1,0.2", "--to", "nat"]


def weights_not_a_number(d: Path, url: str) -> list[str]:
    return ["weights", "convert", ",".join(["0.5"] * 13 + ["x"] + ["0.5"] * 13), "--to", "nat"]


def payload_broken(d: Path, url: str) -> list[str]:
    (d / "p.json").write_text('{"prompt": "x", "steps": "many"}')
    return ["payload", "show", "p.json"]


def payload_jinja_escape(d: Path, url: str) -> list[str]:
    # would create "pwned" in the folder (the snapshot would see it) if the sandbox let it run
    prompt = "{{ cycler.__init__.__globals__.os.system('touch pwned') }}"
    (d / "p.json").write_text(json.dumps({"prompt": prompt, "wildcard_type": "jinja2"}))
    return ["payload", "expand", "p.json"]


def payload_jinja_bomb(d: Path, url: str) -> list[str]:
    (d / "p.json").write_text(
        json.dumps({"prompt": "{{ 'a' * 10**10 }}", "wildcard_type": "jinja2"})
    )
    return ["payload", "expand", "p.json"]


def recursive_wildcard(d: Path, url: str) -> list[str]:
    (d / "wildcards").mkdir()
    (d / "wildcards" / "a.txt").write_text("__b__\n")
    (d / "wildcards" / "b.txt").write_text("more __a__\n")
    (d / "p.json").write_text(json.dumps({"prompt": "__a__", "wildcard_type": "random"}))
    return ["payload", "expand", "p.json"]


def yaml_alias_bomb(d: Path, url: str) -> list[str]:
    path = _config(d)
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path.write_text(path.read_text() + "\n".join(lines) + "\nx: *a8\n")
    return ["config", "check", "search.yaml"]


def payload_trailing_comma(d: Path, url: str) -> list[str]:
    (d / "p.json").write_text('{"prompt": "x",\n "steps": 4,\n}\n')
    return ["payload", "show", "p.json"]


def windows_path_in_double_quotes(d: Path, url: str) -> list[str]:
    path = _config(d)
    _replace(
        path, "payloads: {files: [apple.json]}", 'payloads: {files: ["C:\\Users\\me\\p.json"]}'
    )
    return ["config", "check", "search.yaml"]


def windows_relative_path(d: Path, url: str) -> list[str]:
    path = _config(d)
    _replace(path, "payloads: {files: [apple.json]}", "payloads: {files: [.\\apple.json]}")
    return ["config", "check", "search.yaml"]


def windows_drive_path(d: Path, url: str) -> list[str]:
    path = _config(d)
    _replace(path, "models: {", "models: {a_file: 'C:/models/simA.safetensors', ")
    return ["config", "check", "search.yaml"]


def simulate_port_out_of_range(d: Path, url: str) -> list[str]:
    return ["webui", "simulate", "--port", "99999"]


def simulate_models_dir_is_a_file(d: Path, url: str) -> list[str]:
    (d / "models.txt").write_text("not a folder")
    return ["webui", "simulate", "--models-dir", "models.txt"]


def simulate_infinite_latency(d: Path, url: str) -> list[str]:
    return ["webui", "simulate", "--latency-per-image", "inf"]


def config_infinite_latency(d: Path, url: str) -> list[str]:
    _config(d, instances="{simulate: 1, latency: .inf}")
    return ["config", "check", "search.yaml"]


CASES = [
    Case("malformed-yaml", malformed_yaml, 2, ("bad.yaml:",)),
    Case("unknown-key", unknown_key, 2, ("search.yaml", "scorrer")),
    Case("misspelled-nested-key", misspelled_nested_key, 2, ("search.yaml", "optimizr")),
    Case("wrong-type", wrong_type, 2, ("search.yaml", "max_evaluations")),
    Case("out-of-range-weights", out_of_range_weights, 2, ("search.yaml", "1.5")),
    Case("wrong-weight-count", wrong_weight_count, 2, ("search.yaml", "3 values")),
    Case("missing-config", missing_config, 2, ("nothere.yaml",)),
    Case("config-is-a-folder", config_is_a_folder, 2, ("folder.yaml",)),
    Case("missing-payload", missing_payload, 2, ("apple.json",)),
    Case("broken-payload-json", broken_payload_json, 2, ("apple.json",)),
    Case("missing-wildcard", missing_wildcard, 2, ("nosuchcard",)),
    Case("url-without-scheme", url_without_scheme, 2, ("search.yaml", "url")),
    Case("url-bad-port", url_bad_port, 2, ("search.yaml", "port")),
    Case(
        "not-a-webui-404",
        not_a_webui_404,
        3,
        ("plain", "404", "not an AUTOMATIC1111 WebUI", "scheme://host:port"),
        lines=4,
    ),
    Case("not-a-webui-html", not_a_webui_html, 3, ("plain",), lines=2),
    Case("doctor-not-a-webui", doctor_not_a_webui, 3, ("plain",), error_line=False),
    Case(
        "doctor-wrong-port",
        doctor_wrong_port,
        3,
        ("unreachable", "is the WebUI running on that port"),
        error_line=False,
    ),
    Case("recover-missing", recover_missing, 6, ("history.csv",)),
    Case("recover-truncated-history", recover_truncated_history, 6, ("history.csv", "row")),
    Case("recover-corrupt-mbwrt-csv", recover_corrupt_mbwrt_csv, 6, ("history.csv", "oops")),
    Case("recover-log-without-evaluation", recover_log_without_evaluation, 6, ("console.log",)),
    Case("recover-binary-garbage", recover_binary, 6, ("history.csv",)),
    Case("recover-dev-zero", recover_dev_zero, 6, ("/dev/zero", "binary")),
    Case("recover-endless-line", recover_endless_line, 6, ("console.log", "line 1", "longer")),
    Case("merge-mismatched", merge_mismatched, 4, ("b.safetensors",)),
    Case("merge-not-a-checkpoint", merge_not_a_checkpoint, 4, ("b.safetensors",)),
    Case("merge-missing-file", merge_missing_file, 2, ("nothere.safetensors",)),
    Case("merge-out-of-range", merge_out_of_range, 2, ("1.5",)),
    Case("merge-wrong-count", merge_wrong_count, 2, ("3 values",)),
    Case("merge-over-existing-output", merge_over_existing, 7, ("out.safetensors",)),
    Case("weights-wrong-count", weights_wrong_count, 2, ("2 values",)),
    Case("weights-not-a-number", weights_not_a_number, 2, ("'x'",)),
    Case("payload-wrong-type", payload_broken, 2, ("p.json", "steps")),
    Case("payload-jinja-escape", payload_jinja_escape, 2, ("p.json", "sandbox", "__globals__")),
    Case("payload-jinja-bomb", payload_jinja_bomb, 2, ("p.json", "too large")),
    Case("recursive-wildcard", recursive_wildcard, 2, ("p.json", "__a__ -> __b__ -> __a__")),
    Case("yaml-alias-bomb", yaml_alias_bomb, 2, ("search.yaml", "aliases")),
    Case(
        "payload-trailing-comma", payload_trailing_comma, 2, ("p.json:3:1", "extra comma"), lines=2
    ),
    Case(
        "windows-path-in-double-quotes",
        windows_path_in_double_quotes,
        2,
        ("single quotes",),
        lines=2,
    ),
    Case("windows-drive-path", windows_drive_path, 2, ("a_file", "Windows drive path"), lines=3),
    Case("windows-relative-path", windows_relative_path, 2, ("apple.json", "forward slashes")),
    Case(
        "simulate-port-out-of-range", simulate_port_out_of_range, 2, ("--port",), error_line=False
    ),
    Case("simulate-models-dir-is-a-file", simulate_models_dir_is_a_file, 2, ("models.txt",)),
    Case("simulate-infinite-latency", simulate_infinite_latency, 2, ("--latency-per-image",)),
    Case("config-infinite-latency", config_infinite_latency, 2, ("search.yaml", "latency")),
]


# --- a loopback HTTP server that is not a WebUI -------------------------------------------------
class _NotAWebUI(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        if self.path.startswith("/html"):
            body = b"<!doctype html><html><body><h1>My router</h1></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
        else:
            body = b"Not Found"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def not_a_webui() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAWebUI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _main(
    args: list[str], cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """Run the console-script entry point (``autombw_cli.cli.main``) in this process, as the
    installed ``autombw`` runs it: (exit code, stdout, stderr). In-process keeps the cases
    fast (no torch import per case); the kill and safety tests use real subprocesses."""
    from autombw_cli.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    not_a_webui: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = case.setup(work, not_a_webui)
    before = _snapshot(work)
    code, stdout, stderr = _main(args, work, capsys, monkeypatch)
    proc = subprocess.CompletedProcess(args, code, stdout, stderr)
    assert proc.returncode == case.exit_code, f"exit {proc.returncode}\n{proc.stderr}{proc.stdout}"
    if case.error_line:
        lines = proc.stderr.strip().splitlines()
        assert lines and lines[0].startswith("error: "), proc.stderr
        first = " ".join(lines[: case.lines])
    else:
        first = proc.stdout + proc.stderr
    for name in case.names:
        assert name in first, f"{name!r} not in the first line: {first!r}"
    assert "Traceback" not in proc.stderr
    after = _snapshot(work)
    assert after == before, "something was written or overwritten"


def test_failed_preflight_leaves_no_folder(
    tmp_path: Path,
    not_a_webui: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = not_a_webui_404(tmp_path, not_a_webui)
    code, _, _ = _main(args, tmp_path, capsys, monkeypatch)
    assert code == 3
    assert not (tmp_path / "runs").exists()
