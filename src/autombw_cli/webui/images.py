"""Decoding the base64 images of a txt2img answer.

The format follows the server's ``samples_format`` setting, so it is sniffed from magic
bytes (PNG, JPEG, WebP), never assumed. Data that is not base64, not one of those formats, or
cut short (a dropped connection, a proxy limit) raises ``WebUIBadResponse`` naming the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct

from PIL import Image

from autombw_cli.webui.errors import WebUIBadResponse

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_EOI = b"\xff\xd9"


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"webp"`` from the first bytes; None for anything else."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def truncation_problem(data: bytes, fmt: str) -> str | None:
    """Why ``data`` looks cut short, or None when its end is where the format says it is."""
    if fmt == "png":
        # The IEND chunk (length 0, type, CRC) closes every PNG; servers write nothing after it.
        if not data.rstrip(b"\x00").endswith(PNG_IEND):
            return "the PNG has no IEND chunk at its end"
    elif fmt == "jpeg":
        if not data.rstrip(b"\x00").endswith(JPEG_EOI):
            return "the JPEG has no end-of-image marker"
    elif fmt == "webp":
        (riff_size,) = struct.unpack("<I", data[4:8])
        if len(data) < riff_size + 8:
            return f"the WebP says {riff_size + 8} bytes but has {len(data)}"
    return None


def decode_base64(text: str, *, what: str = "image", instance: str | None = None) -> bytes:
    """Base64 (optionally with a ``data:image/...;base64,`` prefix) to bytes."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WebUIBadResponse(
            f"{what} is not valid base64 ({e})",
            hint="the WebUI or a proxy in between mangled the answer; retry, then check the "
            "WebUI console",
            instance=instance,
        ) from e


def decode_image(
    data: bytes, *, what: str = "image", instance: str | None = None
) -> tuple[Image.Image, str]:
    """Bytes to a fully loaded PIL image and its sniffed format."""
    fmt = sniff_format(data)
    if fmt is None:
        head = data[:16]
        raise WebUIBadResponse(
            f"{what} is not a PNG, JPEG or WebP image ({len(data)} bytes starting {head!r})",
            hint="check the WebUI's 'samples_format' setting (png, jpg or webp) and any "
            "extension that post-processes API images",
            instance=instance,
        )
    problem = truncation_problem(data, fmt)
    if problem is not None:
        raise WebUIBadResponse(
            f"{what} is truncated: {problem} ({len(data)} bytes)",
            hint="the connection or a proxy cut the answer short; retry the evaluation",
            instance=instance,
        )
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise WebUIBadResponse(
            f"{what} ({fmt}, {len(data)} bytes) cannot be decoded: {e}",
            hint="the image data is corrupt; retry the evaluation",
            instance=instance,
        ) from e
    return img, fmt


def decode_b64_image(
    text: str, *, what: str = "image", instance: str | None = None
) -> tuple[Image.Image, bytes, str]:
    """A base64 image string to (loaded PIL image, raw bytes, format)."""
    data = decode_base64(text, what=what, instance=instance)
    img, fmt = decode_image(data, what=what, instance=instance)
    return img, data, fmt
