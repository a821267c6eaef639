"""Loading ImageReward fully offline: upstream modules, weight files, tokenizer, model.

Why not ``ImageReward.load``? It cannot work offline: it calls the hub for the checkpoint and
``med_config.json`` and ``BertTokenizer.from_pretrained("bert-base-uncased")`` inside the model
constructor. And ``import ImageReward`` runs the package ``__init__``, which imports its
training script (diffusers, accelerate, datasets) and OpenAI ``clip`` (which needs
``setuptools<81``): version breakage in any of those stops scoring.

So we import only the upstream *model* modules (``models/BLIP/vit.py`` and ``med.py``, the code
that defines the architecture and the state-dict keys) under a private package name that skips
the package ``__init__`` files, and build the same network from them: the BLIP ViT (its size read
from the checkpoint), the BERT text encoder with cross-attention from ``med_config.json``, and
the 5-layer MLP head. Keys are checked: a file that is not an ImageReward checkpoint is an error
(upstream loads with ``strict=False`` and would score with random weights).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import os
import re
import socket
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autombw_cli.errors import ScorerError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "HUB_REPO",
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
    "ImageRewardFiles",
    "build_model",
    "import_upstream",
    "load_tokenizer",
    "require_extra",
    "resolve_files",
]

log = logging.getLogger(__name__)

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT_NAME = "ImageReward.pt"
MED_CONFIG_NAME = "med_config.json"
TOKENIZER_HUB_NAME = "bert-base-uncased"
# ImageReward's reward normalisation (upstream ImageReward.__init__: self.mean / self.std).
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
_ALIAS = "_autombw_upstream_imagereward"


def import_upstream() -> types.SimpleNamespace:
    """The upstream ``ImageReward`` model modules, imported without the package ``__init__``s.

    Returns a namespace with ``vit``, ``med``, ``blip``, ``blip_pretrain`` and ``image_reward``
    (the module defining the upstream ``ImageReward`` class). Importing twice is cheap.
    """
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise ScorerError(
            "the image-reward package is not installed",
            hint='install it with: pip install "autombw[imagereward]"',
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in ((_ALIAS, root), (f"{_ALIAS}.models", root / "models")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    try:
        return types.SimpleNamespace(
            vit=importlib.import_module(f"{_ALIAS}.models.BLIP.vit"),
            med=importlib.import_module(f"{_ALIAS}.models.BLIP.med"),
            blip=importlib.import_module(f"{_ALIAS}.models.BLIP.blip"),
            blip_pretrain=importlib.import_module(f"{_ALIAS}.models.BLIP.blip_pretrain"),
            image_reward=importlib.import_module(f"{_ALIAS}.ImageReward"),
        )
    except ImportError as exc:
        raise ScorerError(
            f"image-reward cannot be imported: {exc}",
            hint="it needs transformers<4.56, timm==0.6.13 and fairscale; "
            'reinstall with: pip install "autombw[imagereward]"',
        ) from exc


# The modules the imagereward extra brings (pyproject's [imagereward]), by import name.
EXTRA_MODULES = {
    "ImageReward": "image-reward",
    "transformers": "transformers<4.56",
    "huggingface_hub": "huggingface-hub<1.0",
    "timm": "timm",
    "fairscale": "fairscale",
    "clip": "openai-clip",
}
INSTALL_EXTRA = (
    'pip install "autombw[imagereward]"  (from a clone: pip install -e ".[imagereward]")'
)


def require_extra() -> None:
    """Refuse early, naming the extra, when the ImageReward dependencies are not installed
    (otherwise the first missing one surfaces as a puzzling download or import error)."""
    missing = [pkg for mod, pkg in EXTRA_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ScorerError(
            f"the imagereward scorer needs packages that are not installed: {', '.join(missing)}",
            hint=f"install the imagereward extra: {INSTALL_EXTRA}",
        )


@dataclass(frozen=True)
class ImageRewardFiles:
    """The three things ImageReward needs, as local paths (tokenizer: folder or vocab file)."""

    checkpoint: Path
    med_config: Path
    tokenizer: Path | None  # None: "bert-base-uncased" from the local Hugging Face cache/hub


def _hub_file(filename: str, root: Path, field: str) -> Path:
    target = root / filename
    if target.is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise ScorerError(
            f"{filename} is not in {root} and HF_HUB_OFFLINE is set, so it cannot be downloaded",
            hint=f"download {filename} from https://huggingface.co/{HUB_REPO} and set "
            f"scorer.paths.{field} to it (or put it in {root})",
        )
    unreachable = hub_unreachable()
    if unreachable:
        raise ScorerError(
            f"{filename} is not in {root} and the Hugging Face hub cannot be reached to "
            f"download it ({unreachable})",
            hint=f"on a machine with internet, download {filename} from "
            f"https://huggingface.co/{HUB_REPO}; then set scorer.paths.{field} to it "
            f"(or put it in {root})",
        )
    try:
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from the Hugging Face hub (%s) to %s", filename, HUB_REPO, root)
        root.mkdir(parents=True, exist_ok=True)
        with _quiet_hub_retries():
            return Path(hf_hub_download(repo_id=HUB_REPO, filename=filename, local_dir=root))
    except Exception as exc:  # network, offline mode, auth: all mean "give me a local path"
        raise ScorerError(
            f"{filename} is not in {root} and could not be downloaded from "
            f"huggingface.co/{HUB_REPO}: {type(exc).__name__}: {exc}",
            hint=f"download {filename} from https://huggingface.co/{HUB_REPO} and set "
            f"scorer.paths.{field} to it (or put it in {root})",
        ) from exc


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (a DNS failure, a refused or timed-out connection), or
    None when a TCP connection to it opens. Behind an HTTP(S) proxy the check is skipped (the
    download goes through the proxy). It turns the hub client's ~30 s of retry warnings on an
    offline machine into one message."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host or "huggingface.co", 443), timeout=timeout).close()
    except OSError as exc:
        return f"{host}: {exc.strerror or type(exc).__name__}"
    return None


@contextmanager
def _quiet_hub_retries() -> Iterator[None]:
    """The hub client logs a warning per retry; the error we raise after them says it all."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def _local(path: Path, field: str, what: str, source: str) -> Path:
    path = path.expanduser()
    if not path.exists():
        raise ScorerError(
            f"scorer.paths.{field}: {path} does not exist ({what})",
            hint=f"it comes from {source}",
        )
    return path


def resolve_files(
    checkpoint: Path | None = None,
    med_config: Path | None = None,
    tokenizer: Path | None = None,
    download_root: Path | None = None,
) -> ImageRewardFiles:
    """Local paths for every file, downloading (once, into ``download_root``) what is unset.

    With ``HF_HUB_OFFLINE=1`` nothing is downloaded; a file that is missing then raises
    `ScorerError` naming it and where it comes from.
    """
    root = (download_root or Path("~/.cache/ImageReward")).expanduser()
    hub = f"https://huggingface.co/{HUB_REPO}"
    ckpt = (
        _local(checkpoint, "checkpoint", "the ImageReward state dict", hub)
        if checkpoint
        else _hub_file(CHECKPOINT_NAME, root, "checkpoint")
    )
    med = (
        _local(med_config, "med_config", "ImageReward's BERT config", hub)
        if med_config
        else _hub_file(MED_CONFIG_NAME, root, "med_config")
    )
    tok = (
        _local(
            tokenizer,
            "tokenizer",
            "the bert-base-uncased tokenizer folder or its vocab.txt",
            "https://huggingface.co/bert-base-uncased (vocab.txt, tokenizer_config.json)",
        )
        if tokenizer
        else None
    )
    return ImageRewardFiles(ckpt, med, tok)


def load_tokenizer(path: Path | None) -> Any:
    """BLIP's tokenizer: bert-base-uncased plus ``[DEC]`` (bos) and ``[ENC]``, as upstream
    ``init_tokenizer`` builds it, from a folder, a ``vocab.txt`` or the local hub cache."""
    from transformers import BertTokenizer

    try:
        if path is None:  # the hub cache; asking an unreachable hub only adds retries
            offline = os.environ.get("HF_HUB_OFFLINE") or hub_unreachable() is not None
            with _quiet_hub_retries():
                tokenizer = BertTokenizer.from_pretrained(
                    TOKENIZER_HUB_NAME, local_files_only=bool(offline)
                )
        elif path.is_dir():
            tokenizer = BertTokenizer.from_pretrained(str(path))
        else:
            tokenizer = BertTokenizer(vocab_file=str(path), do_lower_case=True)
    except (OSError, ValueError) as exc:
        where = str(path) if path else f"the Hugging Face hub ({TOKENIZER_HUB_NAME})"
        raise ScorerError(
            f"cannot load the BERT tokenizer from {where}: {exc}",
            hint="set scorer.paths.tokenizer to a local bert-base-uncased folder or its "
            "vocab.txt (from https://huggingface.co/bert-base-uncased)",
        ) from exc
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    return tokenizer


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScorerError(
            f"cannot read the ImageReward checkpoint {path}: {type(exc).__name__}: {exc}",
            hint=f"use ImageReward.pt from https://huggingface.co/{HUB_REPO} (a plain state dict)",
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ScorerError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


@dataclass(frozen=True)
class VitShape:
    """The BLIP ViT's size, read from the checkpoint (ImageReward: large, 224 px)."""

    embed_dim: int
    depth: int
    patch_size: int
    image_size: int
    mlp_ratio: float

    @property
    def num_heads(self) -> int:
        return self.embed_dim // 64  # BLIP: base 768/12, large 1024/16


def vit_shape(state: dict[str, torch.Tensor], path: Path) -> VitShape:
    p = "blip.visual_encoder."
    try:
        embed_dim = int(state[p + "cls_token"].shape[-1])
        patch = int(state[p + "patch_embed.proj.weight"].shape[-1])
        tokens = int(state[p + "pos_embed"].shape[1]) - 1
        hidden = int(state[p + "blocks.0.mlp.fc1.weight"].shape[0])
    except KeyError as exc:
        raise ScorerError(
            f"{path} is not an ImageReward checkpoint: it has no {exc.args[0]!r}",
            hint=f"use ImageReward.pt from https://huggingface.co/{HUB_REPO}",
        ) from None
    blocks = {m.group(1) for k in state if (m := re.match(re.escape(p) + r"blocks\.(\d+)\.", k))}
    side = math.isqrt(tokens)
    return VitShape(embed_dim, len(blocks), patch, side * patch, hidden / embed_dim)


def build_network(upstream: types.SimpleNamespace, med_config: Path, shape: VitShape) -> nn.Module:
    """The ImageReward network with freshly initialised (random) weights."""
    from torch import nn

    vit = upstream.vit.VisionTransformer(
        img_size=shape.image_size,
        patch_size=shape.patch_size,
        embed_dim=shape.embed_dim,
        depth=shape.depth,
        num_heads=shape.num_heads,
        mlp_ratio=shape.mlp_ratio,
    )
    try:
        config = upstream.med.BertConfig.from_json_file(str(med_config))
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ScorerError(f"cannot read med_config {med_config}: {exc}") from exc
    config.encoder_width = shape.embed_dim
    text = upstream.med.BertModel(config=config, add_pooling_layer=False)
    model = nn.Module()
    model.blip = nn.Module()
    model.blip.visual_encoder = vit
    model.blip.text_encoder = text
    model.mlp = upstream.image_reward.MLP(config.hidden_size)
    return model


def build_model(files: ImageRewardFiles) -> nn.Module:
    """The ImageReward network (``blip.visual_encoder``, ``blip.text_encoder``, ``mlp``) with the
    checkpoint's weights, on the CPU, in eval mode, float32."""
    upstream = import_upstream()
    state = _load_state_dict(files.checkpoint)
    shape = vit_shape(state, files.checkpoint)
    model = build_network(upstream, files.med_config, shape)
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("embeddings.position_ids")}
    missing = sorted(set(expected) - set(state) - optional)
    if missing:
        raise ScorerError(
            f"{files.checkpoint} lacks {len(missing)} ImageReward weights (first: {missing[0]})",
            hint="is it ImageReward.pt? Does med_config match it (layers, vocab size)?",
        )
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise ScorerError(
            f"{files.checkpoint}: {k} has shape {tuple(state[k].shape)}, the model expects "
            f"{tuple(expected[k].shape)} ({len(wrong)} such weights)",
            hint=f"check that {files.med_config} belongs to this checkpoint",
        )
    model.load_state_dict({k: state[k] for k in expected if k in state}, strict=False)
    return model.eval().requires_grad_(False)
