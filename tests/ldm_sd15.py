"""SD1.5 built from the classes AUTOMATIC1111 1.10.1 uses, for the bridge's GPU tests and
``benchmarks/bridge_ldm_gpu.py``.

A1111 1.10.1 builds SD1 models from Stability-AI/stablediffusion's ``ldm`` package (commit
cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf) with its ``configs/v1-inference.yaml``:
``model.diffusion_model`` is ``ldm.modules.diffusionmodules.openaimodel.UNetModel``,
``first_stage_model`` an ``AutoencoderKL`` (``Encoder``/``Decoder`` of
``ldm.modules.diffusionmodules.model`` plus two 1x1 convs; the Lightning wrapper itself is not
built here), ``cond_stage_model`` a ``FrozenCLIPEmbedder`` whose ``transformer`` is
transformers' ``CLIPTextModel`` (openai/clip-vit-large-patch14's text config, no download;
transformers 4.x: A1111 pins 4.30.2, and 5.x changed the class's key layout).
Weights are loaded with ``load_state_dict(strict=True)``, then cast (A1111's ``model.half()``)
and the text encoder is wrapped as A1111's ``sd_hijack`` does, so the live keys are
``cond_stage_model.wrapped.transformer...`` and ``...token_embedding.wrapped.weight``.

The ``ldm`` package is found on ``sys.path`` or in ``$AUTOMBW_LDM_PATH`` (a folder holding
``ldm/``, e.g. ``git -C <stablediffusion mirror> archive cf1d67a6 ldm | tar -x -C DIR``). The
checkpoint key layout (names and shapes of a real SD1 checkpoint) is read from
``$AUTOMBW_SD1_KEYS``, else ``$AUTOMBW_LDM_PATH/sd1-ldm-keys.json``, else
``../shared/a1111/sd1-ldm-keys.json`` beside the checkout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from autombw_cli.sim.host import SimHost
from autombw_cli.webui.bridge.names import CheckpointRef

REPO_ROOT = Path(__file__).resolve().parents[1]
LDM_PATH_ENV = "AUTOMBW_LDM_PATH"
KEYS_ENV = "AUTOMBW_SD1_KEYS"

# configs/v1-inference.yaml, model.params.unet_config.params
SD15_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_heads": 8,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 768,
    "use_checkpoint": False,
    "legacy": False,
}
# configs/v1-inference.yaml, first_stage_config.params (embed_dim) and its ddconfig
SD15_VAE_EMBED_DIM = 4
SD15_VAE = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}
# openai/clip-vit-large-patch14 text_config (as ../shared/a1111/make_hf_cache.py writes it)
CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def import_ldm() -> SimpleNamespace:
    """The real classes; ImportError when ``ldm``, einops, omegaconf or transformers is
    missing."""
    extra = os.environ.get(LDM_PATH_ENV)
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    import einops  # noqa: F401  (ldm imports these: a clear ImportError first)
    import omegaconf  # noqa: F401
    import transformers
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if int(transformers.__version__.split(".")[0]) >= 5:
        # transformers 5 dropped CLIPTextModel's ``text_model.`` level: its keys no longer match
        # SD1 checkpoints (A1111 1.10.1 pins transformers 4.30.2, whose layout 4.x keeps).
        raise ImportError(f"needs transformers 4.x, not {transformers.__version__}")

    return SimpleNamespace(
        UNetModel=UNetModel,
        Encoder=Encoder,
        Decoder=Decoder,
        CLIPTextConfig=CLIPTextConfig,
        CLIPTextModel=CLIPTextModel,
    )


def keys_file() -> Path | None:
    candidates = [os.environ.get(KEYS_ENV)]
    if os.environ.get(LDM_PATH_ENV):
        candidates.append(str(Path(os.environ[LDM_PATH_ENV]) / "sd1-ldm-keys.json"))
    candidates.append(str(REPO_ROOT.parent / "shared" / "a1111" / "sd1-ldm-keys.json"))
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def sd1_key_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of a real SD1 checkpoint and its shape (``sd1-ldm-keys.json``)."""
    path = keys_file()
    if path is None:
        raise FileNotFoundError(f"sd1-ldm-keys.json not found (set {KEYS_ENV})")
    return {k: tuple(v) for k, v in json.loads(path.read_text()).items()}


def random_sd15(
    seed: int, dtype: torch.dtype = torch.float16, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """A random-weight SD1.5 checkpoint (CPU tensors) with the real key names and shapes;
    drawn on ``device`` (fast on a GPU), ``N(0, 0.05)`` like ``sim.checkpoints``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for key, shape in sd1_key_shapes().items():
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.05
        out[key] = t.to(dtype).cpu()
    return out


def build_unet(device: str | torch.device) -> nn.Module:
    """A bare ``UNetModel`` with SD1.5's parameters (float32, random init) on ``device``."""
    ldm = import_ldm()
    with torch.device(device):
        return ldm.UNetModel(**SD15_UNET)


def build_clip_text(device: str | torch.device) -> nn.Module:
    ldm = import_ldm()
    with torch.device(device):
        return ldm.CLIPTextModel(ldm.CLIPTextConfig(**CLIP_L_TEXT))


def build_sd15(device: str | torch.device) -> nn.Module:
    """The module tree A1111 builds for an SD1 checkpoint (before weights are loaded): its
    ``state_dict`` keys are the checkpoint keys."""
    ldm = import_ldm()
    root = nn.Module()  # stands in for LatentDiffusion
    with torch.device(device):
        root.model = nn.Module()  # DiffusionWrapper
        root.model.diffusion_model = ldm.UNetModel(**SD15_UNET)
        vae = nn.Module()  # AutoencoderKL
        vae.encoder = ldm.Encoder(**SD15_VAE)
        vae.decoder = ldm.Decoder(**SD15_VAE)
        z = SD15_VAE["z_channels"]
        vae.quant_conv = nn.Conv2d(2 * z, 2 * SD15_VAE_EMBED_DIM, 1)
        vae.post_quant_conv = nn.Conv2d(SD15_VAE_EMBED_DIM, z, 1)
        root.first_stage_model = vae
        root.cond_stage_model = nn.Module()  # FrozenCLIPEmbedder
        root.cond_stage_model.transformer = ldm.CLIPTextModel(ldm.CLIPTextConfig(**CLIP_L_TEXT))
    return root


class Wrapped(nn.Module):
    """What A1111's ``sd_hijack`` puts around a module: the original under ``.wrapped``
    (``EmbeddingsWithFixes``, ``FrozenCLIPEmbedderWithCustomWords``)."""

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.wrapped(*args, **kwargs)


def hijack_like_a1111(model: nn.Module) -> nn.Module:
    """``sd_hijack.hijack`` for a FrozenCLIPEmbedder: wrap the token embedding, then the whole
    text encoder (A1111 1.10.1 ``modules/sd_hijack.py`` lines 237-240)."""
    embeddings = model.cond_stage_model.transformer.text_model.embeddings
    embeddings.token_embedding = Wrapped(embeddings.token_embedding)
    model.cond_stage_model = Wrapped(model.cond_stage_model)
    return model


def text_encoder(model: nn.Module) -> nn.Module:
    """The CLIPTextModel of a (hijacked or not) SD1 model."""
    csm = model.cond_stage_model
    return (csm.wrapped if isinstance(csm, Wrapped) else csm).transformer


def load_sd15(
    state: dict[str, torch.Tensor], device: str | torch.device, dtype: torch.dtype
) -> nn.Module:
    """A1111's load: build, ``load_state_dict(strict=True)``, cast to ``dtype`` (its
    ``model.half()``), hijack the text encoder."""
    model = build_sd15(device)
    model.load_state_dict(state, strict=True)
    model.to(dtype)
    model.requires_grad_(False)
    model.eval()
    return hijack_like_a1111(model)


def checkpoint_key(live_key: str) -> str:
    """The checkpoint key of a live key (the hijack's ``.wrapped.`` levels dropped)."""
    return live_key.replace(".wrapped.", ".")


class LdmHost(SimHost):
    """The simulator's host (checkpoint folder, refresh, listeners, file loading), but the live
    model is SD1.5 from A1111's real classes, on ``device`` in ``dtype``."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cuda",
        dtype: torch.dtype = torch.float16,
        lock: threading.Lock | None = None,
    ) -> None:
        self.device, self.dtype = device, dtype
        super().__init__(model_dir, lock=lock)

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        super().load_checkpoint(ref)  # reads the file (into a generic module), tells listeners
        generic = self.live_model()
        assert generic is not None
        state = dict(generic.state_dict())
        self._model = None
        del generic
        self._model = load_sd15(state, self.device, self.dtype)


def unet_forward(
    unet: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """One UNet call as A1111 makes it (under autocast when the weights are half)."""
    dtype = next(unet.parameters()).dtype
    with (
        torch.no_grad(),
        torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        return unet(x, timesteps=t, context=context).float()


def clip_tokens(device: str | torch.device) -> torch.Tensor:
    """A fixed 1x77 prompt: BOS, a few ids, EOS, EOS padding (A1111's padding)."""
    ids = [49406, 320, 1929, 539, 550, 5803, 530, 518, 2117, 49407]
    return torch.tensor([ids + [49407] * (77 - len(ids))], device=device)


def text_forward(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    dtype = next(clip.parameters()).dtype
    with (
        torch.no_grad(),
        torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        return clip(input_ids=tokens).last_hidden_state.float()
