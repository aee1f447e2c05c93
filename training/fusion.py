"""The fusion MLP: image and text embeddings, has_image flag and catalogue features -> log price.

Besides the log1p(price) it returns the L2-normalised retrieval vector (its last hidden layer),
the query of the client's nearest-neighbour search.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm


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

    Outputs: (log_price [B, 1], retrieval_vector [B, 256] unit length).
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        standardised = (numeric_features - self.numeric_mean) / self.numeric_std
        hidden = self.body(torch.cat([image_embedding, text_embedding, has_image, standardised], dim=1))
        log_price = self.head(self.dropout(hidden))
        return log_price, F.normalize(hidden, p=2.0, dim=1)


@dataclass(frozen=True)
class FusionSettings:
    """Optimisation settings (the seed's: AdamW, lr 1e-3, batch 64, up to 8 epochs; cross-fitting
    picks the epoch count, see training.pipeline)."""

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
    settings: FusionSettings = FusionSettings(),
    epochs: int | None = None,
    on_epoch: Callable[[int, FusionMLP], None] | None = None,
) -> tuple[FusionMLP, list[dict]]:
    """Trains on `train_rows` with an L1 loss on log1p(price) (it tracks SMAPE), for `epochs`
    epochs (default: `settings.max_epochs`); no other row is looked at.

    Args:
        on_epoch: called after each epoch with its number and the model (in eval mode), e.g. to
            score held-out rows for the choice of the epoch count.

    Returns:
        (model in eval mode, per-epoch history of training loss and seconds).
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

    history = []
    progress = tqdm(range(1, (epochs or settings.max_epochs) + 1), desc="fusion MLP", unit="epoch", leave=False)
    for epoch in progress:
        started = time.perf_counter()
        model.train()
        order = generator.permutation(train_rows)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:  # BatchNorm needs two rows in training mode
                continue
            log_price, _ = model(*inputs.tensors(batch))
            loss = F.l1_loss(log_price, targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        history.append({"epoch": epoch, "train_l1": total / len(order), "seconds": time.perf_counter() - started})
        progress.set_postfix(train_l1=f"{history[-1]['train_l1']:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, model.eval())
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
        log_price, vector = model(*inputs.tensors(indices[start : start + batch_size]))
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
