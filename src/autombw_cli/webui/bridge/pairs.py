"""Which checkpoints a request names, and whether two of them (A and B, and A and C for an
add-difference merge) can be merged block by block, or a LoRA placed on A.

The verdict for a pair of files (their architecture, or why not) is kept for the files' current
size and modification time, so a search's thousands of merges of one pair read the headers
once. The check itself is `merging.checkpoint_io.check_mergeable` (the one key/shape check),
over the UNet's keys: the text encoders and the VAE may differ (they are A's unless merged).
torch and the stdlib only (copied into the WebUI extension).
"""

from __future__ import annotations

from pathlib import Path

from autombw_cli.blocks import UNET_PREFIX, Arch
from autombw_cli.errors import AutombwError, ModelMismatchError
from autombw_cli.merging.checkpoint_io import check_mergeable, read_key_shapes
from autombw_cli.merging.lora import PlacedLora, place_lora
from autombw_cli.webui.bridge.errors import BadRequest, Conflict, UnknownModel, ValidationError
from autombw_cli.webui.bridge.names import CheckpointRef, close_names, find_checkpoint

FileKey = tuple[str, int, int]  # path, mtime_ns, size
_MEMO = 8  # files (and pairs) remembered


def resolve(
    requested: object, refs: list[CheckpointRef], field_name: str, *, what: str = "checkpoint"
) -> CheckpointRef:
    """The checkpoint (``what="LoRA"``: the LoRA file) a request's ``model_a``/``model_b``/
    ``model_c`` names (404 with close names)."""
    if not isinstance(requested, str) or not requested.strip():
        raise ValidationError(f"{field_name} must be a {what} name")
    ref = find_checkpoint(requested, refs)
    if ref is None:
        close = close_names(requested, refs)
        where = (
            "see GET /sdapi/v1/sd-models, or refresh the checkpoint list"
            if what == "checkpoint"
            else "see GET /sdapi/v1/loras (the WebUI's Lora folder)"
        )
        hint = f"did you mean {', '.join(close)}?" if close else where
        raise UnknownModel(f"{field_name}: unknown {what} {requested!r}", hint=hint)
    return ref


class PairChecker:
    """`check` with the file headers and verdicts remembered per file version."""

    def __init__(self) -> None:
        self._shapes: dict[FileKey, dict[str, tuple[int, ...]]] = {}
        self._verdicts: dict[tuple[FileKey, FileKey], Arch] = {}
        self._loras: dict[tuple[FileKey, FileKey], PlacedLora] = {}

    def place_lora(self, ref_a: CheckpointRef, ref_lora: CheckpointRef) -> PlacedLora:
        """The LoRA ``ref_lora`` placed on A's keys (`merging.lora.place_lora`), remembered
        per file version; 400 for an unreadable or unsupported LoRA file, 409 for one that does
        not fit A (another architecture, a module it cannot place, a shape)."""
        key = (_file_key(ref_a.path), _file_key(ref_lora.path))
        placed = self._loras.get(key)
        if placed is None:
            shapes = self._read(ref_a, key[0])
            try:
                placed = place_lora(ref_lora.path, shapes, source=ref_lora.name)
            except ModelMismatchError as exc:
                unreadable = "not a readable LoRA" in exc.message
                error = BadRequest if unreadable else Conflict
                raise error(exc.message, hint=exc.hint, kind="ModelMismatch") from None
            except AutombwError as exc:
                raise BadRequest(exc.message, hint=exc.hint, kind="ModelMismatch") from None
            _remember(self._loras, key, placed)
        return placed

    def check(
        self, ref_a: CheckpointRef, ref_b: CheckpointRef, ref_c: CheckpointRef | None = None
    ) -> Arch:
        """The pair's architecture; 400 for an unreadable file, 409 for a pair that cannot be
        merged block by block (naming the first UNet key that differs). With ``ref_c`` (add
        difference), A and C are checked the same way."""
        arch = self._check(ref_a, ref_b, "model B")
        if ref_c is not None:
            self._check(ref_a, ref_c, "model C")
        return arch

    def _check(self, ref_a: CheckpointRef, ref_b: CheckpointRef, role: str) -> Arch:
        key = (_file_key(ref_a.path), _file_key(ref_b.path))
        arch = self._verdicts.get(key)
        if arch is None:
            shapes_a, shapes_b = self._read(ref_a, key[0]), self._read(ref_b, key[1])
            try:
                arch = check_mergeable(
                    shapes_a,
                    shapes_b,
                    name_a=f"model A ({ref_a.name})" if role == "model C" else ref_a.name,
                    name_b=f"{role} ({ref_b.name})" if role == "model C" else ref_b.name,
                    prefix=UNET_PREFIX,
                )
            except AutombwError as exc:
                raise Conflict(exc.message, hint=exc.hint, kind="ModelMismatch") from None
            _remember(self._verdicts, key, arch)
        return arch

    def _read(self, ref: CheckpointRef, key: FileKey) -> dict[str, tuple[int, ...]]:
        shapes = self._shapes.get(key)
        if shapes is None:
            try:
                shapes = read_key_shapes(ref.path)
            except Exception as exc:  # a broken file is the user's to fix, not a bridge bug
                why = exc.message if isinstance(exc, AutombwError) else str(exc)
                raise BadRequest(
                    f"{ref.name}: not a readable checkpoint ({why})",
                    hint=getattr(exc, "hint", None),
                    kind="ModelMismatch",
                ) from exc
            _remember(self._shapes, key, shapes)
        return shapes


def _remember(memo: dict, key: object, value: object) -> None:  # type: ignore[type-arg]
    if len(memo) >= _MEMO:
        memo.clear()
    memo[key] = value


def _file_key(path: Path) -> FileKey:
    try:
        st = path.stat()
    except OSError as exc:
        raise UnknownModel(f"cannot read checkpoint {path} ({exc})") from None
    return (str(path), st.st_mtime_ns, st.st_size)


def same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def same_or_linked(a: Path, b: Path) -> bool:
    """`same_file`, or one file under two names (hard link, case-insensitive file system)."""
    if same_file(a, b):
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False
