"""Fine-tuning the text encoder on log1p(price), with a linear regression head.

The encoder keeps its exported form (its folder's pooling, Dense layers and normalisation inside
`forward`) and the head reads the sentence embedding; encoder and head together are the served text encoder
graph, with the embedding and the head's log price as its two outputs. Batches group rows of
similar token length (shuffled within buckets of several batches, then the batches are
shuffled), which cuts the padding a CPU would otherwise compute.

Training steps may run under bfloat16 autocast (`precision`): the weights, the optimiser state,
the loss and every embedding that later stages or export read stay float32; only the matrix
products of the forward and backward passes are computed in bfloat16.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from client.cpu import cpu_flags
from client.text import TextTokenizer
from training.encoders import TextEncoder, load_text_encoder

HEAD_FILE = "price_head.safetensors"
PRECISIONS = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags under which `auto` trains in bfloat16: AMX tiles or AVX-512 BF16 dot products multiply
it natively (measured: 1.68x a float32 step with AMX, 1.39x with AVX-512 BF16 alone)."""


@dataclass(frozen=True)
class FineTuneSettings:
    """Optimisation of the text encoder (CPU defaults for all-MiniLM-L6-v2 at 128 tokens: the
    cross-fitted default training on 6,928 rows took 42 minutes on 2 cores with AMX-BF16, 63 on
    2 cores of an AMD EPYC with AVX-512 BF16).

    Training runs on CUDA when torch sees a GPU. For the production encoder there
    (all-mpnet-base-v2 at 256 tokens), `learning_rate=3e-5` is the usual starting point for a
    base-size encoder; it has not been run here (no GPU, no model hub).

    `precision` "auto" trains in bfloat16 where the hardware multiplies it natively (a CUDA GPU
    that supports it, a CPU with AMX-BF16 or AVX-512 BF16) and in float32 elsewhere, where
    bfloat16 would be emulated and slower; "fp32" or "bf16" force one.
    """

    epochs: int = 2
    batch_size: int = 32
    precision: str = "auto"
    learning_rate: float = 8e-5
    head_learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    bucket_batches: int = 50
    seed: int = 42


class PriceRegressor(nn.Module):
    """A text encoder and a linear head on its sentence embedding.

    Outputs: (text_embedding [B, dim], log1p(price) [B, 1]); exported as the served text encoder.
    """

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embedding_dim, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(input_ids, attention_mask)
        return embedding, self.head(embedding)


def training_device() -> torch.device:
    """Where fine-tuning runs: CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """"fp32" or "bf16": what `precision` means on `device` (and these CPU flags, default this CPU's).

    Raises:
        ValueError: `precision` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"fine-tuning precision {precision!r} is not known; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if BF16_CPU_FLAGS & (cpu_flags() if flags is None else flags) else "fp32"


def bucketed_batches(lengths: np.ndarray, rows: np.ndarray, settings: FineTuneSettings,
                     generator: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches over `rows`: random buckets, sorted by length inside, batches shuffled."""
    order = generator.permutation(rows)
    bucket = settings.batch_size * settings.bucket_batches
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + settings.batch_size] for i in range(0, len(chunk), settings.batch_size)]
    return [batches[i] for i in generator.permutation(len(batches))]


def fine_tune(
    encoder: TextEncoder,
    tokenizer: TextTokenizer,
    token_ids: list[np.ndarray],
    log_prices: np.ndarray,
    train_rows: np.ndarray,
    settings: FineTuneSettings = FineTuneSettings(),
) -> tuple[PriceRegressor, list[dict]]:
    """Fine-tunes `encoder` (in place) and a fresh head with an L1 loss on log1p(price).

    A fixed schedule (linear warm-up, then linear decay to 0) and no early stopping: no row
    outside `train_rows` is looked at, so every other row stays unseen by the encoder.

    Returns:
        (regressor in eval mode on the CPU, per-epoch history of training loss and seconds).
    """
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    device = training_device()
    precision = resolve_precision(settings.precision, device)
    model = PriceRegressor(encoder).to(device)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(float(log_prices[train_rows].mean()))
    optimiser = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": settings.learning_rate},
            {"params": model.head.parameters(), "lr": settings.head_learning_rate},
        ],
        weight_decay=settings.weight_decay,
    )
    lengths = np.asarray([len(ids) for ids in token_ids])
    steps_per_epoch = -(-len(train_rows) // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_linear_schedule_with_warmup(optimiser, int(settings.warmup_fraction * total_steps), total_steps)
    targets = torch.from_numpy(log_prices.astype(np.float32)).to(device)

    history = []
    progress = tqdm(total=total_steps, desc="fine-tuning text encoder", unit="batch")
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        total = 0.0
        progress.set_postfix(epoch=f"{epoch}/{settings.epochs}")
        for batch in bucketed_batches(lengths, train_rows, settings, generator):
            input_ids, attention_mask = (torch.from_numpy(a).to(device)
                                         for a in tokenizer.pad([token_ids[i] for i in batch]))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, log_price = model(input_ids, attention_mask)
            loss = F.l1_loss(log_price[:, 0].float(), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            total += loss.item() * len(batch)
            progress.update()
        history.append({"epoch": epoch, "train_l1": total / len(train_rows), "seconds": time.perf_counter() - started})
        progress.write(f"fine-tuning epoch {epoch}: train L1 {history[-1]['train_l1']:.4f} "
                       f"in {history[-1]['seconds']:.0f} s ({precision})")
    progress.close()
    return model.cpu().eval(), history


@torch.inference_mode()
def encode_with_head(model: PriceRegressor, tokenizer: TextTokenizer, token_ids: list[np.ndarray],
                     batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [n, dim], head log prices [n]) for every row, in batches of similar length."""
    model.eval()
    embeddings = np.zeros((len(token_ids), model.encoder.embedding_dim), dtype=np.float32)
    log_prices = np.zeros(len(token_ids), dtype=np.float32)
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="text embeddings", unit="batch"):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = tokenizer.pad([token_ids[i] for i in rows])
        embedding, log_price = model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        embeddings[rows] = embedding.numpy()
        log_prices[rows] = log_price[:, 0].numpy()
    return embeddings, log_prices


def save_regressor(model: PriceRegressor, directory: Path) -> Path:
    """Writes a model folder that `load_regressor` (and `load_text_encoder`) reads: the
    fine-tuned encoder as a sentence-transformers folder of the base model's layout, and the head."""
    model.encoder.save(directory)
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(directory / HEAD_FILE))
    return directory


def load_regressor(directory: Path) -> tuple[PriceRegressor, dict]:
    """The fine-tuned encoder and head `save_regressor` wrote, in eval mode, and its identity."""
    encoder, identity = load_text_encoder(str(directory))
    model = PriceRegressor(encoder)
    model.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    return model.eval(), identity
