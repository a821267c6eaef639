"""Decoding the base64 images of a txt2img answer.

The format follows the server's ``samples_format`` setting, so it is sniffed from magic
bytes (PNG, JPEG, WebP), never assumed. Data that is not base64, not one of those formats, or
cut short (a dropped connection, a proxy limit) raises ``WebUIBadResponse`` naming the image.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from typing import Any

from PIL import Image

from autombw_cli.webui.errors import WebUIBadResponse
from autombw_cli.webui.models import Txt2ImgResponse, Txt2ImgResult

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


def decode_txt2img(
    raw: Txt2ImgResponse, *, instance: str | None = None, elapsed: float = 0.0
) -> Txt2ImgResult:
    """Decode every image of a txt2img answer and keep the generated ones (see
    ``Txt2ImgResult``): a batch grid sits before ``index_of_first_image``, extension extras
    (ControlNet maps...) after the ``len(all_seeds)`` generated images."""
    info = parse_info(raw.info, instance)
    decoded = [
        decode_b64_image(b64, what=f"txt2img image {i}", instance=instance)
        for i, b64 in enumerate(raw.images or [])
    ]
    first = info.get("index_of_first_image", 0)
    first = first if isinstance(first, int) and 0 <= first <= len(decoded) else 0
    seeds = info.get("all_seeds")
    count = len(seeds) if isinstance(seeds, list) and seeds else len(decoded) - first
    picked = decoded[first : first + count]
    extra = decoded[:first] + decoded[first + count :]
    return Txt2ImgResult(
        images=[img for img, _, _ in picked],
        raw_images=[data for _, data, _ in picked],
        formats=[fmt for _, _, fmt in picked],
        info=info,
        parameters=dict(raw.parameters),
        extra_images=[img for img, _, _ in extra],
        elapsed_s=elapsed,
    )


def parse_info(info: str | dict[str, Any], instance: str | None) -> dict[str, Any]:
    """txt2img's ``info``: a JSON string (a dict in some forks)."""
    if isinstance(info, dict):
        return info
    if not info:
        return {}
    try:
        parsed = json.loads(info)
    except ValueError as e:
        raise WebUIBadResponse(
            f"txt2img: 'info' is not JSON ({e})",
            hint="an extension may have altered the API answer",
            instance=instance,
        ) from e
    return parsed if isinstance(parsed, dict) else {}
