"""The fusion MLP: image and text embeddings, has_image flag and catalogue features -> log price.

Besides the log1p(price) it returns, for serving in one graph, the L2-normalised retrieval
vector (its last hidden layer) and the float32 feature vector LightGBM takes, so the Triton
ensemble needs no extra step between the fusion model and LightGBM.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from client.blend import smape, to_price


@dataclass(frozen=True)
class FusionArchitecture:
    """Architecture of the fusion MLP (the seed's: 1024 - 256 - 1 with BatchNorm and dropout)."""

    image_dim: int
    text_dim: int
    numeric_dim: int
    hidden_dims: tuple[int, int] = (1024, 256)
    dropout: float = 0.2

    @property
    def input_dim(self) -> int:
        return self.image_dim + self.text_dim + 1 + self.numeric_dim


class FusionMLP(nn.Module):
    """Inputs: image_embedding [B, Di], text_embedding [B, Dt], has_image [B, 1],
    numeric_features [B, F] (all float32).

    Outputs: (log_price [B, 1], retrieval_vector [B, 256] unit length, gbm_features [B, Di+Dt+1+F]).
    Numeric features are standardised inside the module with statistics of the training rows.
    """

    def __init__(self, architecture: FusionArchitecture):
        super().__init__()
        self.architecture = architecture
        first, second = architecture.hidden_dims
        self.register_buffer("numeric_mean", torch.zeros(architecture.numeric_dim))
        self.register_buffer("numeric_std", torch.ones(architecture.numeric_dim))
        self.body = nn.Sequential(
            nn.Linear(architecture.input_dim, first),
            nn.BatchNorm1d(first),
            nn.ReLU(),
            nn.Dropout(architecture.dropout),
            nn.Linear(first, second),
            nn.BatchNorm1d(second),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(architecture.dropout)
        self.head = nn.Linear(second, 1)

    def set_numeric_statistics(self, numeric: np.ndarray) -> None:
        """Standardise numeric features with these rows' mean and std (constant columns: std 1)."""
        std = numeric.std(axis=0)
        self.numeric_mean.copy_(torch.from_numpy(numeric.mean(axis=0).astype(np.float32)))
        self.numeric_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))

    def forward(
        self,
        image_embedding: torch.Tensor,
        text_embedding: torch.Tensor,
        has_image: torch.Tensor,
        numeric_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gbm_features = torch.cat([image_embedding, text_embedding, has_image, numeric_features], dim=1)
        standardised = (numeric_features - self.numeric_mean) / self.numeric_std
        hidden = self.body(torch.cat([image_embedding, text_embedding, has_image, standardised], dim=1))
        log_price = self.head(self.dropout(hidden))
        return log_price, F.normalize(hidden, p=2.0, dim=1), gbm_features


@dataclass(frozen=True)
class FusionSettings:
    """Optimisation settings (the seed's: AdamW, lr 1e-3, batch 64, up to 8 epochs)."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 8
    seed: int = 42


@dataclass
class FusionInputs:
    """The four input arrays of the fusion model for a set of rows."""

    image_embedding: np.ndarray
    text_embedding: np.ndarray
    has_image: np.ndarray
    numeric_features: np.ndarray

    def tensors(self, rows: np.ndarray | slice = slice(None)) -> tuple[torch.Tensor, ...]:
        return (
            torch.from_numpy(np.ascontiguousarray(self.image_embedding[rows], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(self.text_embedding[rows], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(self.has_image[rows], dtype=np.float32).reshape(-1, 1)),
            torch.from_numpy(np.ascontiguousarray(self.numeric_features[rows], dtype=np.float32)),
        )

    def __len__(self) -> int:
        return len(self.has_image)


def train_fusion(
    inputs: FusionInputs,
    log_prices: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: FusionSettings = FusionSettings(),
) -> tuple[FusionMLP, list[dict]]:
    """Trains on `train_rows` with an L1 loss on log1p(price) (it tracks SMAPE), keeping the
    epoch with the best validation SMAPE.

    Returns:
        (model in eval mode, per-epoch history of losses and validation SMAPE).
    """
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    model = FusionMLP(FusionArchitecture(
        image_dim=inputs.image_embedding.shape[1],
        text_dim=inputs.text_embedding.shape[1],
        numeric_dim=inputs.numeric_features.shape[1],
    ))
    model.set_numeric_statistics(inputs.numeric_features[train_rows])
    with torch.no_grad():  # start from the mean log price, not 0, so few epochs suffice
        model.head.bias.fill_(float(log_prices[train_rows].mean()))
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    targets = torch.from_numpy(log_prices.astype(np.float32)).view(-1, 1)
    val_prices = np.expm1(log_prices[val_rows])

    best_state, best_score, history = None, np.inf, []
    progress = tqdm(range(1, settings.max_epochs + 1), desc="fusion MLP", unit="epoch")
    for epoch in progress:
        started = time.perf_counter()
        model.train()
        order = generator.permutation(train_rows)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:  # BatchNorm needs two rows in training mode
                continue
            log_price, _, _ = model(*inputs.tensors(batch))
            loss = F.l1_loss(log_price, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        val_smape = smape(val_prices, to_price(predict_fusion(model, inputs, val_rows)[0]))
        history.append(
            {"epoch": epoch, "train_l1": total / len(order), "val_smape": val_smape,
             "seconds": time.perf_counter() - started}
        )
        progress.set_postfix(train_l1=f"{history[-1]['train_l1']:.4f}", blend_smape=f"{val_smape:.2f}")
        if val_smape < best_score:
            best_score, best_state = val_smape, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), history


@torch.inference_mode()
def predict_fusion(
    model: FusionMLP, inputs: FusionInputs, rows: np.ndarray | slice = slice(None), batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """(log price [n], retrieval vectors [n, 256]) for `rows`, in eval mode."""
    model.eval()
    indices = np.arange(len(inputs))[rows]
    log_prices, vectors = [], []
    for start in range(0, len(indices), batch_size):
        log_price, vector, _ = model(*inputs.tensors(indices[start : start + batch_size]))
        log_prices.append(log_price[:, 0].numpy())
        vectors.append(vector.numpy())
    return np.concatenate(log_prices), np.concatenate(vectors)


def save_fusion(model: FusionMLP, weights: Path, architecture: Path) -> None:
    """Writes the weights (safetensors) and the architecture (JSON)."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    architecture.write_text(json.dumps(asdict(model.architecture), indent=2))


def load_fusion(weights: Path, architecture: Path) -> FusionMLP:
    """Rebuilds the model `save_fusion` wrote, in eval mode."""
    raw = json.loads(architecture.read_text())
    raw["hidden_dims"] = tuple(raw["hidden_dims"])
    model = FusionMLP(FusionArchitecture(**raw))
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
