"""`export-bundle`: from a training output folder to a deployment folder.

Exports the five models to ONNX, measures parity on real rows with the files reloaded from
disk, writes the Triton configs, the client bundle, the manifest and MODEL_CARD.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.blend import COMPONENTS
from client.bundle import (
    BLEND_FILE,
    BUNDLE_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    REPOSITORY_DIR,
    TOKENIZER_FILE,
    ServingSettings,
    save_settings,
    sha256_file,
    write_manifest,
)
from client.catalog import NUMERIC_FEATURE_NAMES
from client.errors import InputError
from client.images import ImageFetcher, load_images
from client.models import FUSION, IMAGE_ENCODER, LEXICAL, LIGHTGBM, TEXT_ENCODER, ModelDims, served_models
from client.retrieval import NeighbourIndex
from client.table import read_catalog_csv
from export.model_card import write_model_card
from export.onnx_export import (
    FusionExporter,
    ImageEncoderExporter,
    LexicalExporter,
    LightGbmExporter,
    TextEncoderExporter,
    onnx_opsets,
)
from export.parity import BATCH_SIZES, ParityResult, compare, load_session, raise_on_failure, run_in_batches
from export.triton_config import write_repository_configs
from training.encoders import load_image_encoder, make_tokenizer
from training.features import extract_features
from training.finetune import load_regressor
from training.fusion import load_fusion
from training.gbm import gbm_features, load_gbm
from training.lexical import load_lexical
from training.pipeline import BLEND_FILE as RUN_BLEND_FILE
from training.pipeline import REPORT_FILE, RUN_FILE, TEXT_EMBEDDINGS_FILE, TEXT_ENCODER_DIR, TrainConfig
from training.report import package_versions

logger = logging.getLogger(__name__)

PARITY_ROWS = 64


@dataclass
class ExportResult:
    root: Path
    parity: list[ParityResult]


def _train_config(run_dir: Path, run_info: dict) -> TrainConfig:
    """The run's settings, with its fine-tuned text encoder in place of the base one."""
    raw = run_info["config"]
    keep = {k: raw[k] for k in ("image_encoder", "ocr_engine", "max_tokens", "retrieval_k", "seed")}
    keep |= {k: raw[k] for k in ("csv_encoding", "allow_local_files", "allow_private_addresses") if k in raw}
    keep["allowed_networks"] = tuple(raw.get("allowed_networks", ()))
    images = Path(raw["images_dir"]) if raw.get("images_dir") else None
    return TrainConfig(csv=Path(raw["csv"]), output=run_dir, images_dir=images,
                       text_encoder=str(run_dir / TEXT_ENCODER_DIR), **keep)


def check_export_paths(run_dir: Path, output: Path) -> None:
    """Refuses an output that export would have to delete although it is no deployment.

    Raises:
        InputError: `output` is a file, a non-empty folder without a deployment manifest, or
            holds `run_dir`.
    """
    if not (run_dir / RUN_FILE).is_file():
        raise InputError(f"{run_dir}: no {RUN_FILE}; is this a folder written by `train`?")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output} is a file: name a folder for the deployment")
    if run_dir.resolve().is_relative_to(output.resolve()):
        raise InputError(f"{output} holds the training run {run_dir}: name another folder for the deployment")
    if output.is_dir() and any(output.iterdir()) and not (output / BUNDLE_DIR / MANIFEST_FILE).is_file():
        raise InputError(f"{output} is a folder with other files in it (no deployment manifest): it is replaced "
                         "on export, so name a new or empty folder, or a previous deployment")


def export_run(run_dir: Path, output: Path, *, tensorrt_fp16: bool = False, parity_rows: int = PARITY_ROWS,
               check: bool = True) -> ExportResult:
    """Exports a training run into `output` (model_repository/ + bundle/ + MODEL_CARD.md).

    Args:
        run_dir: a folder written by `train`.
        output: the deployment folder; replaced if it exists.
        tensorrt_fp16: enable TensorRT FP16 in the GPU configs (check its parity on the GPU).
        parity_rows: real rows used for the encoders' parity checks (all rows for fusion/LightGBM).
        check: raise ParityError when a bound is missed.

    Raises:
        InputError: `run_dir` is no complete training run, or `output` is a file or a folder
            that holds something other than a deployment (it is never deleted then).
        ParityError: an exported graph misses its parity bound (with `check`).
    """
    check_export_paths(run_dir, output)
    try:
        run_info = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{run_dir}: not a complete training run folder ({error})") from None
    config = _train_config(run_dir, run_info)
    torch.manual_seed(config.seed)
    image_encoder, image_identity = load_image_encoder(config.image_encoder)
    text_dir = Path(config.text_encoder)
    text_encoder, text_identity = load_regressor(text_dir)
    fusion = load_fusion(run_dir)
    booster = load_gbm(run_dir)
    lexical = load_lexical(run_dir)
    dims = ModelDims(image_dim=image_identity["embedding_dim"], text_dim=text_identity["embedding_dim"],
                     numeric_dim=len(NUMERIC_FEATURE_NAMES))

    if output.exists():
        shutil.rmtree(output)
    repository, bundle = output / REPOSITORY_DIR, output / BUNDLE_DIR
    paths = {name: repository / name / "1" / MODEL_FILE
             for name in (IMAGE_ENCODER, TEXT_ENCODER, LEXICAL, FUSION, LIGHTGBM)}
    ImageEncoderExporter(dims).export(image_encoder, paths[IMAGE_ENCODER])
    TextEncoderExporter(dims).export(text_encoder, paths[TEXT_ENCODER])
    LexicalExporter(dims).export(lexical, paths[LEXICAL])
    FusionExporter(dims).export(fusion, paths[FUSION])
    LightGbmExporter(dims).export(booster, paths[LIGHTGBM])

    models = {IMAGE_ENCODER: image_encoder, TEXT_ENCODER: text_encoder, LEXICAL: lexical, FUSION: fusion,
              LIGHTGBM: booster}
    parity = measure_parity(config, run_dir, paths, models, parity_rows)
    for result in parity:
        logger.info("parity %s", result.describe())
    if check:
        raise_on_failure(parity)

    model_sha256 = {name: sha256_file(path) for name, path in paths.items()}
    write_repository_configs(repository, dims, tensorrt_fp16=tensorrt_fp16, model_sha256=model_sha256)
    for spec in served_models(dims).values():
        if spec.is_ensemble:  # Triton wants a version folder for ensembles too
            (repository / spec.name / "1").mkdir(exist_ok=True)

    bundle.mkdir(parents=True)
    tokenizer = make_tokenizer(config.text_encoder, config.max_tokens)
    for name in (TOKENIZER_FILE, "special_tokens_map.json"):
        shutil.copy(text_dir / name, bundle / name)
    NeighbourIndex.load(run_dir).save(bundle)
    run_blend = json.loads((run_dir / RUN_BLEND_FILE).read_text())
    weights = run_blend[f"{run_blend['use']}_weights"]
    (bundle / BLEND_FILE).write_text(json.dumps({"components": list(COMPONENTS), "weights": weights,
                                                 "source": run_blend["use"]}, indent=2))
    settings = ServingSettings(
        image_size=dims.image_size, max_tokens=config.max_tokens,
        pad_token=tokenizer.tokenizer.id_to_token(tokenizer.pad_id), ocr_engine=config.ocr_engine,
        numeric_features=tuple(NUMERIC_FEATURE_NAMES), retrieval_k=config.retrieval_k,
        image_dim=dims.image_dim, text_dim=dims.text_dim,
    )
    save_settings(bundle, settings)

    report = json.loads((run_dir / REPORT_FILE).read_text())
    details = {
        "source_models": {"image_encoder": image_identity, "text_encoder": text_identity,
                          "base_text_encoder": run_info["models"]["base_text_encoder"]},
        "training_run": str(run_dir),
        "opsets": {name: onnx_opsets(path) for name, path in paths.items()},
        "versions": package_versions(),
        "parity": [r.as_dict() for r in parity],
        "validation_smape": report["validation_smape"],
        "tensorrt_fp16": tensorrt_fp16,
    }
    write_model_card(output, config, report, details, settings)
    write_manifest(output, details)
    return ExportResult(output, parity)


@torch.inference_mode()
def measure_parity(config: TrainConfig, run_dir: Path, paths: dict[str, Path], models: dict,
                   parity_rows: int) -> list[ParityResult]:
    """Compares each exported graph with its source model on real rows of the training data."""
    table = read_catalog_csv(config.csv, with_prices=True, bad_prices="skip", encoding=config.csv_encoding)
    fetcher = ImageFetcher(config.images_dir, cache_dir=run_dir / "image_cache", policy=config.link_policy())
    features = extract_features(table, fetcher, run_dir / "features", config.feature_settings())
    results: list[ParityResult] = []

    def check(model: str, inputs: dict[str, np.ndarray], references: list[np.ndarray], metrics: list[str]) -> None:
        session = load_session(str(paths[model]))
        runs = {size: run_in_batches(session, inputs, size) for size in BATCH_SIZES}
        for i, (output, metric) in enumerate(zip([o.name for o in session.get_outputs()], metrics)):
            results.append(compare(model, output, references[i], {s: r[i] for s, r in runs.items()}, metric))

    with_image = np.flatnonzero(features.has_image)[:parity_rows]
    if len(with_image):
        prepared = load_images(fetcher, [table.image_links[i] for i in with_image])
        pixels = np.stack([p.pixels for p in prepared if p.has_image])
        reference = models[IMAGE_ENCODER](torch.from_numpy(pixels)).numpy()
        check(IMAGE_ENCODER, {"image": pixels}, [reference], ["min_cosine"])

    tokenizer = make_tokenizer(config.text_encoder, config.max_tokens)
    rows = np.linspace(0, len(table) - 1, min(parity_rows, len(table))).astype(int)
    input_ids, attention_mask = tokenizer.pad(tokenizer.encode([features.texts[i] for i in rows]))
    tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
    embedding, text_log_price = models[TEXT_ENCODER](torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    check(TEXT_ENCODER, tokens, [embedding.numpy(), text_log_price.numpy()], ["min_cosine", "max_abs_diff"])
    lexical = models[LEXICAL](torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    check(LEXICAL, tokens, [lexical.numpy()], ["max_abs_diff"])

    text_embedding = np.load(run_dir / TEXT_EMBEDDINGS_FILE)
    inputs = features.fusion_inputs(text_embedding)
    fusion_inputs = dict(zip(("image_embedding", "text_embedding", "has_image", "numeric_features"),
                             (t.numpy() for t in inputs.tensors())))
    log_price, vectors, gbm_vector = (t.numpy() for t in models[FUSION](*inputs.tensors()))
    check(FUSION, fusion_inputs, [log_price, vectors, gbm_vector], ["max_abs_diff", "min_cosine", "max_abs_diff"])

    matrix = gbm_features(inputs)
    check(LIGHTGBM, {"gbm_features": matrix}, [models[LIGHTGBM].predict(matrix).reshape(-1, 1)], ["fraction_within"])
    return results
