"""The model folder format of sentence-transformers, read without sentence-transformers.

A folder's `modules.json` lists its modules in order, each with a type and a sub-folder: a
Transformer (the transformers model, usually at the root), a Pooling module (its config names
the pooling modes; several modes are concatenated in the order given), optionally Dense layers
(a linear layer and an activation, weights in the sub-folder) and a Normalize module (L2). A
folder without `modules.json` is a plain transformers model, which sentence-transformers embeds
with mean pooling and no normalisation; so does this module.

Supported: Transformer, Pooling with modes "cls", "max" and "mean", Dense with a torch.nn
activation, Normalize. Anything else is refused by name.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "added_tokens.json")
_FOLDER_CONFIGS = ("sentence_bert_config.json", "config_sentence_transformers.json")
MODULE_TYPES = ("Transformer", "Pooling", "Dense", "Normalize")
POOLING_MODES = ("cls", "max", "mean")
# the pooling_mode_* flags of older Pooling configs, in the order their modes are concatenated
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_DENSE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class UnsupportedModelError(ValueError):
    """A sentence-transformers folder uses a module or setting this project cannot export."""


@dataclass(frozen=True)
class DenseSpec:
    """One Dense module: `activation(linear(x))`."""

    path: str
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch.nn class path, e.g. "torch.nn.modules.activation.Tanh"


@dataclass(frozen=True)
class SentenceFolder:
    """How a folder's model turns token embeddings into a sentence embedding.

    Attributes:
        root: the folder.
        transformer_path: sub-folder of the transformers model and its tokenizer ("" for the root).
        pooling: pooling modes, concatenated in this order.
        dense: Dense modules, applied in this order after pooling.
        normalize: whether the embedding is L2-normalised last.
        declared: whether the folder has a modules.json (else: a plain transformers folder).
    """

    root: Path
    transformer_path: str = ""
    pooling: tuple[str, ...] = ("mean",)
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    declared: bool = False

    @property
    def transformer_dir(self) -> Path:
        return self.root / self.transformer_path

    def embedding_dim(self, hidden_size: int) -> int:
        """The sentence embedding's width for a transformer of `hidden_size`."""
        return self.dense[-1].out_features if self.dense else hidden_size * len(self.pooling)

    def build_dense(self) -> list[nn.Sequential]:
        """The Dense modules with their saved weights: Sequential(linear, activation) each."""
        layers = []
        for spec in self.dense:
            linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
            linear.load_state_dict(_load_dense_weights(self.root / spec.path))
            layers.append(nn.Sequential(linear, _activation(spec.activation)))
        return layers

    def save(self, directory: Path, transformer: nn.Module, dense: list[nn.Sequential]) -> None:
        """Writes a folder of the same layout with these (fine-tuned) weights: the transformer,
        its tokenizer files, modules.json and the module configs as they were, the Dense weights."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        transformer.save_pretrained(directory / self.transformer_path)
        for name in TOKENIZER_FILES:
            if (self.transformer_dir / name).is_file():
                shutil.copy(self.transformer_dir / name, directory / self.transformer_path / name)
        if not self.declared:
            return
        for name in (MODULES_FILE, *_FOLDER_CONFIGS):
            if (self.root / name).is_file():
                shutil.copy(self.root / name, directory / name)
        for module in json.loads((self.root / MODULES_FILE).read_text()):
            if not module["path"]:
                continue
            target = directory / module["path"]
            target.mkdir(parents=True, exist_ok=True)
            for config in (self.root / module["path"]).glob("*.json"):
                shutil.copy(config, target / config.name)
        for spec, layer in zip(self.dense, dense):
            save_file({f"linear.{k}": v.contiguous() for k, v in layer[0].state_dict().items()},
                      str(directory / spec.path / "model.safetensors"))


def read_sentence_folder(root: Path) -> SentenceFolder:
    """Reads a folder's modules.json and module configs.

    Raises:
        UnsupportedModelError: a module type, pooling mode or activation this project does not
            support (the message lists what is supported).
    """
    modules_file = root / MODULES_FILE
    if not modules_file.is_file():
        logger.warning("%s has no %s: mean pooling, no normalisation (as sentence-transformers does)", root,
                       MODULES_FILE)
        return SentenceFolder(root)
    transformer_path, pooling, dense, normalize = None, None, [], False
    for position, module in enumerate(json.loads(modules_file.read_text())):
        kind = module["type"].rsplit(".", 1)[-1]
        path = module.get("path", "")
        if kind not in MODULE_TYPES or (kind == "Transformer") != (position == 0):
            raise UnsupportedModelError(
                f"{root}: module {module['type']!r} ({MODULES_FILE} entry {module.get('idx')}) is not supported here; "
                f"supported: a Transformer first, then {', '.join(MODULE_TYPES[1:])}")
        if kind == "Transformer":
            transformer_path = path
        elif kind == "Pooling":
            pooling = _pooling_modes(root / path)
        elif kind == "Dense":
            dense.append(_dense_spec(root, path))
        elif kind == "Normalize":
            normalize = True
    if transformer_path is None or pooling is None:
        raise UnsupportedModelError(f"{root}: {MODULES_FILE} needs a Transformer and a Pooling module")
    return SentenceFolder(root, transformer_path, pooling, tuple(dense), normalize, declared=True)


def _pooling_modes(directory: Path) -> tuple[str, ...]:
    config = json.loads((directory / "config.json").read_text())
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(name for flag, name in _LEGACY_POOLING_FLAGS.items() if config.get(flag)) or ("mean",)
    unsupported = [mode for mode in modes if mode not in POOLING_MODES]
    if unsupported:
        raise UnsupportedModelError(f"{directory}: pooling mode {', '.join(unsupported)} is not supported; "
                                    f"supported: {', '.join(POOLING_MODES)}")
    return modes


def _dense_spec(root: Path, path: str) -> DenseSpec:
    config = json.loads((root / path / "config.json").read_text())
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    _activation(activation)  # refuses an unsupported one now, not at load time
    return DenseSpec(path, int(config["in_features"]), int(config["out_features"]), bool(config.get("bias", True)),
                     activation)


def _activation(class_path: str) -> nn.Module:
    module_name, _, class_name = class_path.rpartition(".")
    activation = getattr(importlib.import_module(module_name), class_name, None) if module_name.startswith(
        "torch.nn") else None
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise UnsupportedModelError(f"Dense activation {class_path!r} is not supported; supported: torch.nn "
                                    "modules without arguments (e.g. torch.nn.modules.activation.Tanh)")
    return activation()


def _load_dense_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in _DENSE_WEIGHTS:
        path = directory / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            return {key.removeprefix("linear."): value for key, value in state.items()}
    raise UnsupportedModelError(f"{directory}: no Dense weights ({' or '.join(_DENSE_WEIGHTS)})")
