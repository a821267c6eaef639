"""``autombw webui install-extension``: write the bridge as a self-contained A1111 extension.

The extension is built from this package's own modules, never from a copy kept by hand:
starting from the bridge modules, every ``autombw_cli`` module they import (at any depth,
including imports inside functions) is copied into a private package ``_autombw_bridge``
inside the extension, with its imports rewritten to that name. The result depends only on
torch, safetensors, fastapi (and starlette, which fastapi brings) and the standard library, and
runs on Python 3.10 (A1111's interpreter): ``enum.StrEnum`` gets a fallback there.

    WEBUI_DIR/extensions/autombw-bridge/
        VERSION                       the autombw version that wrote it
        .autombw-bridge               marker: this folder belongs to autombw (upgrades replace it)
        README.md
        scripts/autombw_bridge.py     registers the routes from script_callbacks.on_app_started
        _autombw_bridge/...           the copied modules

Re-running replaces the folder (written beside it, then swapped in).
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from autombw_cli import __version__
from autombw_cli.errors import ConfigError

EXTENSION_NAME = "autombw-bridge"
PRIVATE_PACKAGE = "_autombw_bridge"
MARKER = ".autombw-bridge"
ROOT_MODULES = (
    "autombw_cli.webui.bridge.core",
    "autombw_cli.webui.bridge.routes",
    "autombw_cli.webui.bridge.a1111_host",
    "autombw_cli.merging.kernels",
)
ALLOWED_THIRD_PARTY = frozenset({"torch", "safetensors", "fastapi", "starlette", "modules"})
_PACKAGE = "autombw_cli"
_IMPORT_LINE = re.compile(r"^(\s*(?:from|import)\s+)autombw_cli\b", re.MULTILINE)
_STRENUM_IMPORT = "from enum import StrEnum\n"
_STRENUM_SHIM = """try:
    from enum import StrEnum
except ImportError:  # Python 3.10, A1111's interpreter
    from enum import Enum

    class StrEnum(str, Enum):  # noqa: UP042
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)
"""

ENTRY_SCRIPT = '''"""autombw bridge: in-memory block merges over HTTP (/autombw/v1/...).

Written by `autombw webui install-extension` (autombw {version}); re-run it to upgrade.
"""

import importlib
import sys
from pathlib import Path

# A1111's load_scripts() puts this extension's folder on sys.path only while this file runs,
# then puts the old sys.path back: every bridge module is imported now, at load time (so a
# later import of one finds it in sys.modules), and the host module is kept here.
_ROOT = str(Path(__file__).resolve().parents[1])
_MODULES = {modules!r}
_added = _ROOT not in sys.path
if _added:
    sys.path.insert(0, _ROOT)
try:
    for _name in _MODULES:
        importlib.import_module(_name)
    from {package}.webui.bridge import a1111_host as _host
finally:
    if _added and _ROOT in sys.path:
        sys.path.remove(_ROOT)

from modules import script_callbacks  # noqa: E402

VERSION = "{version}"


def _on_app_started(_demo, app):
    _host.install(app, version=VERSION)


script_callbacks.on_app_started(_on_app_started)
'''

README = """# autombw bridge (version {version})

Adds `/autombw/v1/status`, `/autombw/v1/merge`, `/autombw/v1/restore` and `/autombw/v1/save`
to this WebUI, so `autombw` can merge two checkpoints block by block in memory.

Written by `autombw webui install-extension`; do not edit (re-running it replaces this folder).
Remove the folder to uninstall. Start the WebUI with `--api` (and `--api-auth user:pass` when
it listens beyond this machine: the bridge routes use the same credentials).
"""


@dataclass(frozen=True)
class ExtensionModule:
    name: str  # dotted autombw_cli module name
    source: Path


def extension_path(webui_dir: Path | str) -> Path:
    return Path(webui_dir).expanduser() / "extensions" / EXTENSION_NAME


def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]  # .../autombw_cli


def _module_file(name: str) -> Path | None:
    rel = name.split(".")[1:]
    base = _package_root().joinpath(*rel)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def collect_modules(roots: tuple[str, ...] = ROOT_MODULES) -> list[ExtensionModule]:
    """The ``autombw_cli`` modules the roots need, transitively (package ``__init__`` files are
    not copied: the extension gets empty ones)."""
    seen: dict[str, ExtensionModule] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            if name == _PACKAGE:
                continue  # `from autombw_cli import __version__`: provided by the new __init__
            raise ConfigError(f"extension build: {name} is not a module file")
        seen[name] = ExtensionModule(name, path)
        for imported in _imports(path):
            if imported.startswith(_PACKAGE + ".") or imported == _PACKAGE:
                todo.append(imported)
            else:
                top = imported.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
                    raise ConfigError(
                        f"extension build: {name} imports {imported}, which a WebUI lacks",
                        hint="the bridge may use torch, safetensors, fastapi and the stdlib only",
                    )
    return sorted(seen.values(), key=lambda m: m.name)


def _imports(path: Path) -> list[str]:
    """Every module imported by the file, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if candidate.startswith(_PACKAGE) and _module_file(candidate) is not None:
                    found.append(candidate)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def rewrite_source(text: str) -> str:
    """Point ``autombw_cli`` imports at the private package; add 3.10 fallbacks."""
    text = _IMPORT_LINE.sub(lambda m: m.group(1) + PRIVATE_PACKAGE, text)
    if _STRENUM_IMPORT in text:
        text = text.replace(_STRENUM_IMPORT, _STRENUM_SHIM, 1)
    return text


def build_extension(dest: Path, *, version: str = __version__) -> list[str]:
    """Write the extension into the (new or empty) folder ``dest``; return the module names."""
    modules = collect_modules()
    pkg_root = dest / PRIVATE_PACKAGE
    for mod in modules:
        rel = mod.name.split(".")[1:]
        target = pkg_root.joinpath(*rel).with_suffix(".py")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite_source(mod.source.read_text(encoding="utf-8")), encoding="utf-8")
    for folder in [pkg_root, *(p for p in pkg_root.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text('"""Copied by autombw webui install-extension."""\n', encoding="utf-8")
    (pkg_root / "__init__.py").write_text(
        f'"""autombw {version}: the bridge modules (copied; do not edit)."""\n\n'
        f'__version__ = "{version}"\n',
        encoding="utf-8",
    )
    scripts = dest / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "autombw_bridge.py").write_text(
        ENTRY_SCRIPT.format(
            version=version,
            package=PRIVATE_PACKAGE,
            modules=tuple(PRIVATE_PACKAGE + m.name[len(_PACKAGE) :] for m in modules),
        ),
        encoding="utf-8",
    )
    (dest / "VERSION").write_text(version + "\n", encoding="utf-8")
    (dest / MARKER).write_text(f"autombw {version}\n", encoding="utf-8")
    (dest / "README.md").write_text(README.format(version=version), encoding="utf-8")
    return [m.name for m in modules]


def install_extension(webui_dir: Path | str, *, version: str = __version__) -> Path:
    """Write (or upgrade) ``WEBUI_DIR/extensions/autombw-bridge``; return its path."""
    webui = Path(webui_dir).expanduser()
    if not webui.is_dir():
        raise ConfigError(
            f"{webui}: no such folder", hint="pass the WebUI's folder (the one with webui.py)"
        )
    if not any((webui / n).exists() for n in ("webui.py", "launch.py", "extensions")):
        raise ConfigError(
            f"{webui} does not look like an AUTOMATIC1111 WebUI folder (no webui.py, "
            "launch.py or extensions/)",
            hint="pass the folder you start the WebUI from",
        )
    target = extension_path(webui)
    if target.exists() and not (target / MARKER).exists():
        raise ConfigError(
            f"{target} exists and was not written by autombw",
            hint="move it away, then run install-extension again",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target.parent)
    staging = _new_dir(target.parent, f".{EXTENSION_NAME}.new-")
    try:
        build_extension(staging, version=version)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{EXTENSION_NAME}.old-", dir=target.parent))
            old.rmdir()
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


LEFTOVER_AGE_S = 60.0  # younger staging folders may belong to an install running right now


def remove_leftovers(extensions: Path, *, now: float | None = None) -> list[Path]:
    """Remove the staging folders an interrupted install left in ``extensions`` (killed between
    building and renaming): ``.autombw-bridge.new-*`` and ``.autombw-bridge.old-*`` older than a
    minute. A1111 loads every folder there, hidden ones too, so a leftover holding a copy of the
    bridge would otherwise load as a second extension. Returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for prefix in (f".{EXTENSION_NAME}.new-", f".{EXTENSION_NAME}.old-"):
        for path in extensions.glob(f"{prefix}*"):
            try:
                if path.is_symlink() or not path.is_dir():
                    continue
                if now - path.stat().st_mtime < LEFTOVER_AGE_S:
                    continue
            except OSError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder in ``parent`` with the umask's mode (``mkdtemp`` would
    make it 0700, and the WebUI may run as another user, e.g. in a container)."""
    while True:
        path = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
