"""The served models as data: names, tensors, dtypes and shapes.

Export writes ONNX graphs and Triton configs from these specs, the client builds its requests
from them, and tests check the committed `model_repository/` against them. Shapes leave out the
batch axis (Triton's convention with `max_batch_size > 0`); -1 is a dynamic axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from client.blend import COMPONENT_OUTPUTS
from client.catalog import NUMERIC_FEATURE_NAMES
from client.images import IMAGE_SIZE
from client.priors import PRIOR_FEATURE_NAMES

ModelRunner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]
"""Runs one served model: ``run(model name, inputs by name) -> outputs by name``. A runner may
also have ``run_many(model name, [inputs, ...]) -> [outputs, ...]`` that runs them all at once
(a server's: the requests in flight together); see :func:`run_each`."""

def run_each(run: ModelRunner, model: str, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Runs `model` on each of `feeds`, in order: all at once where the runner has ``run_many``,
    else one after another."""
    run_many = getattr(run, "run_many", None)
    if run_many is None or len(feeds) < 2:
        return [run(model, feed) for feed in feeds]
    return list(run_many(model, feeds))


MAX_BATCH_SIZE = 64
RETRIEVAL_DIM = 256

IMAGE_ENCODER = "image_encoder"
TEXT_ENCODER = "text_encoder"
FUSION = "fusion"
LIGHTGBM = "lightgbm"
LEXICAL = "lexical"
OCR_DETECTOR = "ocr_detector"
OCR_RECOGNIZER = "ocr_recognizer"
OCR_MODELS = (OCR_DETECTOR, OCR_RECOGNIZER)
ENSEMBLE = "price_ensemble"
TEXT_ONLY_ENSEMBLE = "price_ensemble_text"

# the estimates the LightGBM stacker reads, besides has_image, the numeric features and the price priors
# (not the fusion MLP's: as a stacker input it made the blend no better, training.gbm)
STACKED_ESTIMATES = ("text_log_price", "lexical_log_price")
# one log price per model-computed blend component and the retrieval vector (retrieval's query)
ENSEMBLE_OUTPUTS = (*COMPONENT_OUTPUTS.values(), "retrieval_vector")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # without the batch axis


@dataclass(frozen=True)
class ModelSpec:
    """One served model. `steps` is set for ensembles: (model, input map, output map) per step,
    maps going from the step model's tensor names to the ensemble's."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = ()

    @property
    def is_ensemble(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class ModelDims:
    """The widths that depend on the chosen encoders."""

    image_dim: int = 1280
    text_dim: int = 384
    numeric_dim: int = len(NUMERIC_FEATURE_NAMES)
    image_size: int = IMAGE_SIZE

    @property
    def stack_dim(self) -> int:
        """Width of the LightGBM stacker's feature vector: its inputs, concatenated in order."""
        return len(STACKED_ESTIMATES) + 1 + self.numeric_dim + len(PRIOR_FEATURE_NAMES)


def _same_names(*names: str) -> dict[str, str]:
    return {name: name for name in names}


def served_models(dims: ModelDims = ModelDims()) -> dict[str, ModelSpec]:
    """Every model of the repository, composing models first, keyed by name."""
    image = TensorSpec("image", "uint8", (dims.image_size, dims.image_size, 3))
    image_embedding = TensorSpec("image_embedding", "float32", (dims.image_dim,))
    input_ids = TensorSpec("input_ids", "int64", (-1,))
    attention_mask = TensorSpec("attention_mask", "int64", (-1,))
    text_embedding = TensorSpec("text_embedding", "float32", (dims.text_dim,))
    text_log_price = TensorSpec("text_log_price", "float32", (1,))
    lexical_log_price = TensorSpec("lexical_log_price", "float32", (1,))
    has_image = TensorSpec("has_image", "float32", (1,))
    numeric = TensorSpec("numeric_features", "float32", (dims.numeric_dim,))
    priors = TensorSpec("price_priors", "float32", (len(PRIOR_FEATURE_NAMES),))
    mlp_log_price = TensorSpec("mlp_log_price", "float32", (1,))
    retrieval_vector = TensorSpec("retrieval_vector", "float32", (RETRIEVAL_DIM,))
    gbm_log_price = TensorSpec("gbm_log_price", "float32", (1,))

    tokens = _same_names("input_ids", "attention_mask")
    text_step = (TEXT_ENCODER, tokens, _same_names("text_embedding", "text_log_price"))
    lexical_step = (LEXICAL, tokens, _same_names("lexical_log_price"))
    fusion_step = (
        FUSION,
        _same_names("image_embedding", "text_embedding", "has_image", "numeric_features"),
        _same_names("mlp_log_price", "retrieval_vector"),
    )
    stacker_inputs = (text_log_price, lexical_log_price, has_image, numeric, priors)
    gbm_step = (LIGHTGBM, _same_names(*(t.name for t in stacker_inputs)), _same_names("gbm_log_price"))
    by_name = {t.name: t for t in (mlp_log_price, gbm_log_price, text_log_price, lexical_log_price, retrieval_vector)}
    outputs = tuple(by_name[name] for name in ENSEMBLE_OUTPUTS)
    models = [
        # PP-OCR's networks (client/ppocr.py): the client prepares their inputs and reads their outputs
        ModelSpec(OCR_DETECTOR, (TensorSpec("ocr_image", "float32", (3, -1, -1)),),
                  (TensorSpec("text_probability", "float32", (1, -1, -1)),)),
        ModelSpec(OCR_RECOGNIZER, (TensorSpec("text_lines", "float32", (3, 48, -1)),),
                  (TensorSpec("char_index", "int64", (-1,)), TensorSpec("char_probability", "float32", (-1,)))),
        ModelSpec(IMAGE_ENCODER, (image,), (image_embedding,)),
        ModelSpec(TEXT_ENCODER, (input_ids, attention_mask), (text_embedding, text_log_price)),
        ModelSpec(LEXICAL, (input_ids, attention_mask), (lexical_log_price,)),
        ModelSpec(FUSION, (image_embedding, text_embedding, has_image, numeric),
                  (mlp_log_price, retrieval_vector)),
        # the stacker: LightGBM on the other models' estimates (a Concat node in front of the trees)
        ModelSpec(LIGHTGBM, stacker_inputs, (gbm_log_price,)),
        ModelSpec(
            ENSEMBLE,
            (image, has_image, input_ids, attention_mask, numeric, priors),
            outputs,
            steps=((IMAGE_ENCODER, _same_names("image"), _same_names("image_embedding")),
                   text_step, lexical_step, fusion_step, gbm_step),
        ),
        # Rows without an image skip the image encoder: the client sends zero embeddings.
        ModelSpec(
            TEXT_ONLY_ENSEMBLE,
            (image_embedding, has_image, input_ids, attention_mask, numeric, priors),
            outputs,
            steps=(text_step, lexical_step, fusion_step, gbm_step),
        ),
    ]
    return {model.name: model for model in models}
