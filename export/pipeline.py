"""`export-bundle`: from a training run folder to a deployment folder, in four steps.

1. `load_run`: the run's settings and models, read through training.run_dir.RunDir;
2. `export_graphs`: every model to ONNX (export.onnx_export), then the graphs the serving
   profile quantises to INT8 (export.profiles);
3. `check_parity`: each graph, reloaded from disk, against its source model on real rows, under
   the tolerances its exporter declares (the profile's own for a quantised graph);
4. `write_deployment`: the Triton configs, the client bundle, MODEL_CARD.md and the manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

from client.blend import COMPONENTS
from client.bundle import (
    BLEND_FILE,
    BUNDLE_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    OCR_CHARACTERS_FILE,
    PRIORS_FILE,
    REPOSITORY_DIR,
    TOKENIZER_FILE,
    ServingSettings,
    save_settings,
    sha256_file,
    write_manifest,
)
from client.catalog import NUMERIC_FEATURE_NAMES
from client.cpu import VNNI_FLAGS, cpu_flags, cpu_model
from client.errors import InputError
from client.images import ImageFetcher, load_images
from client.models import (
    FUSION,
    IMAGE_ENCODER,
    LEXICAL,
    LIGHTGBM,
    OCR_RECOGNIZER,
    TEXT_ENCODER,
    ModelDims,
    served_models,
)
from client.ocr import ocr_cache_key
from client.ppocr import graph_characters
from client.retrieval import NeighbourIndex
from export.model_card import write_model_card
from export.onnx_export import OnnxExporter, exporters, onnx_opsets, split_stack_features
from export.parity import ParityResult, check_graph, raise_on_failure
from export.profiles import FP32, ServingProfile, quantize_graphs
from export.triton_config import write_repository_configs
from training.config import TrainConfig
from training.encoders import load_image_encoder, make_tokenizer
from training.features import extract_features
from training.finetune import load_regressor
from training.fusion import load_fusion
from training.gbm import load_gbm
from training.lexical import load_lexical
from training.pipeline import read_training_table
from training.report import package_versions
from training.run_dir import RunDir
from training.sentence_folder import read_sentence_folder

logger = logging.getLogger(__name__)

PARITY_ROWS = 64


@dataclass
class ExportResult:
    root: Path
    parity: list[ParityResult]


@dataclass
class LoadedRun:
    """A training run's models and what the deployment records about them.

    Attributes:
        run: the run folder.
        config: its settings (run.json).
        models: each served model's source (nn.Module or LightGBM booster), by model name.
        identities: the source encoders' identities (image, fine-tuned text, base text).
        dims: the widths the served models are built for.
    """

    run: RunDir
    config: TrainConfig
    models: dict[str, Any]
    identities: dict[str, dict]
    dims: ModelDims

    @property
    def exporters(self) -> dict[str, OnnxExporter]:
        return exporters(self.dims)


def load_run(run_dir: Path) -> LoadedRun:
    """Reads a finished training run: its settings and every model export turns into a graph.

    Raises:
        InputError: the run was trained before its text encoder folder recorded its pooling.
        FileNotFoundError: a file of the run is missing.
    """
    run = RunDir(run_dir)
    config = run.config()
    base_text_encoder = run.model_identities()["base_text_encoder"]
    if "pooling" not in base_text_encoder:
        # its text_encoder/ has no modules.json, yet was trained with mean pooling + normalisation
        raise InputError(f"{run.root} was trained before text encoder folders recorded their pooling: "
                         "train it again to export it")
    torch.manual_seed(config.seed)
    image_encoder, image_identity = load_image_encoder(config.image_encoder)
    text_encoder, text_identity = load_regressor(run.text_encoder)
    models = {
        IMAGE_ENCODER: image_encoder,
        TEXT_ENCODER: text_encoder,
        LEXICAL: load_lexical(run.lexical_weights, run.lexical_settings),
        FUSION: load_fusion(run.fusion_weights, run.fusion_architecture),
        LIGHTGBM: load_gbm(run.lightgbm),
    }
    identities = {"image_encoder": image_identity, "text_encoder": text_identity,
                  "base_text_encoder": base_text_encoder}
    dims = ModelDims(image_dim=image_identity["embedding_dim"], text_dim=text_identity["embedding_dim"],
                     numeric_dim=len(NUMERIC_FEATURE_NAMES))
    return LoadedRun(run, config, models, identities, dims)


def export_graphs(loaded: LoadedRun, repository: Path) -> dict[str, Path]:
    """Writes each model's ONNX file into the model repository; returns the paths by model name."""
    paths = {}
    for name, exporter in tqdm(loaded.exporters.items(), desc="ONNX export", unit="model"):
        paths[name] = exporter.export(loaded.models.get(name), repository / name / "1" / MODEL_FILE)
    return paths


@torch.inference_mode()
def check_parity(loaded: LoadedRun, paths: dict[str, Path], parity_rows: int = PARITY_ROWS,
                 profile: ServingProfile = FP32) -> list[ParityResult]:
    """Compares each exported graph with its source model on real rows of the training data:
    `parity_rows` rows for the encoders and the lexical model, every row for fusion and the
    LightGBM stacker (the out-of-fold inputs it was trained on). A graph `profile` quantises is
    held to the profile's bounds."""
    config, run, models = loaded.config, loaded.run, loaded.models
    table = read_training_table(config)
    fetcher = ImageFetcher(config.images_dir, cache_dir=run.image_cache, policy=config.link_policy())
    features = extract_features(table, fetcher, run.features, config.feature_settings())
    progress = tqdm(total=len(paths), desc="parity", unit="model")

    def check(model: str, inputs: dict[str, np.ndarray], references: dict[str, np.ndarray]) -> list[ParityResult]:
        tolerances = profile.tolerances(model, loaded.exporters[model].tolerances)
        results = check_graph(model, str(paths[model]), inputs, references, tolerances)
        progress.update()
        return results

    results: list[ParityResult] = []
    with_image = np.flatnonzero(features.has_image)[:parity_rows]
    if len(with_image):
        images = load_images(fetcher, [table.image_links[i] for i in with_image], size=loaded.dims.image_size)
        pixels = np.stack([image.pixels for image in images if image.has_image])
        reference = models[IMAGE_ENCODER](torch.from_numpy(pixels)).numpy()
        results += check(IMAGE_ENCODER, {"image": pixels}, {"image_embedding": reference})

    tokenizer = make_tokenizer(str(run.text_encoder), config.max_tokens)
    rows = np.linspace(0, len(table) - 1, min(parity_rows, len(table))).astype(int)
    input_ids, attention_mask = tokenizer.pad(tokenizer.encode([features.texts[i] for i in rows]))
    tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
    embedding, text_log_price = models[TEXT_ENCODER](torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    results += check(TEXT_ENCODER, tokens, {"text_embedding": embedding.numpy(), "text_log_price": text_log_price.numpy()})
    lexical = models[LEXICAL](torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    results += check(LEXICAL, tokens, {"lexical_log_price": lexical.numpy()})

    inputs = features.fusion_inputs(np.load(run.text_embeddings))
    fusion_inputs = dict(zip(("image_embedding", "text_embedding", "has_image", "numeric_features"),
                             (t.numpy() for t in inputs.tensors())))
    log_price, vectors = (t.numpy() for t in models[FUSION](*inputs.tensors()))
    results += check(FUSION, fusion_inputs, {"mlp_log_price": log_price, "retrieval_vector": vectors})

    stacked = np.load(run.stack_features)  # the rows the stacker was trained on
    results += check(LIGHTGBM, split_stack_features(stacked, loaded.dims),
                     {"gbm_log_price": models[LIGHTGBM].predict(stacked).reshape(-1, 1)})
    progress.close()
    return results


def write_deployment(loaded: LoadedRun, output: Path, paths: dict[str, Path], parity: list[ParityResult],
                     tensorrt_fp16: bool = False, profile: ServingProfile = FP32,
                     profile_reason: str = "asked for") -> None:
    """Writes the Triton configs beside the graphs, the client bundle, MODEL_CARD.md and, last,
    the manifest with every file's SHA-256 and the serving profile."""
    config, run, dims = loaded.config, loaded.run, loaded.dims
    repository, bundle = output / REPOSITORY_DIR, output / BUNDLE_DIR
    model_sha256 = {name: sha256_file(path) for name, path in paths.items()}
    write_repository_configs(repository, dims, tensorrt_fp16=tensorrt_fp16, model_sha256=model_sha256,
                             int8_models=set(profile.quantized))
    for spec in served_models(dims).values():
        if spec.is_ensemble:  # Triton wants a version folder for ensembles too
            (repository / spec.name / "1").mkdir(exist_ok=True)

    bundle.mkdir(parents=True)
    tokenizer = make_tokenizer(str(run.text_encoder), config.max_tokens)
    tokenizer_dir = read_sentence_folder(run.text_encoder).transformer_dir
    for name in (TOKENIZER_FILE, "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():  # special_tokens_map.json: not written by transformers >= 5
            shutil.copy(tokenizer_dir / name, bundle / name)
    NeighbourIndex.load(run.retrieval).save(bundle)
    shutil.copy(run.price_priors, bundle / PRIORS_FILE)
    characters = graph_characters(onnx.load(str(paths[OCR_RECOGNIZER])))
    (bundle / OCR_CHARACTERS_FILE).write_text(json.dumps(characters, ensure_ascii=False), encoding="utf-8")
    run_blend = run.read_json(run.blend)
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

    report = run.read_json(run.report)
    details = {
        "source_models": loaded.identities,
        "training_run": str(run.root),
        "opsets": {name: onnx_opsets(path) for name, path in paths.items()},
        "versions": package_versions(),
        "parity": [r.as_dict() for r in parity],
        "oof_smape": {name: score["all"] for name, score in report["oof_smape"].items()},
        "validation_smape": report["validation_smape"],
        "tensorrt_fp16": tensorrt_fp16,
        "profile": profile.name,
        "profile_reason": profile_reason,
        "profile_cpu_flags": sorted(profile.cpu_flags),  # the serving CPU needs one of these
        "export_cpu": {"model": cpu_model(), "vnni": sorted(VNNI_FLAGS & cpu_flags())},
        "precision": {name: profile.precision(name) for name in paths},
    }
    write_model_card(output, config, report, details, settings)
    write_manifest(output, details)


def check_export_paths(run_dir: Path, output: Path) -> None:
    """Refuses an output that export would have to delete although it is no deployment.

    Raises:
        InputError: `output` is a file, a non-empty folder without a deployment manifest, or
            holds `run_dir`.
    """
    run_info = RunDir(run_dir).run_info
    if not run_info.is_file():
        raise InputError(f"{run_dir}: no {run_info.name}; is this a folder written by `train`?")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output} is a file: name a folder for the deployment")
    if run_dir.resolve().is_relative_to(output.resolve()):
        raise InputError(f"{output} holds the training run {run_dir}: name another folder for the deployment")
    if output.is_dir() and any(output.iterdir()) and not (output / BUNDLE_DIR / MANIFEST_FILE).is_file():
        raise InputError(f"{output} is a folder with other files in it (no deployment manifest): it is replaced "
                         "on export, so name a new or empty folder, or a previous deployment")


def check_ocr_reader(loaded: LoadedRun) -> None:
    """Refuses a run whose training rows' OCR text was read by other graphs or settings than the
    ones this export serves: its models learnt from text that serving would not give them.

    Raises:
        InputError: the run's OCR reader (its report's ``ocr.reader``) is not this code's.
    """
    trained = loaded.run.read_json(loaded.run.report).get("ocr", {}).get("reader")
    served = ocr_cache_key(loaded.config.ocr_engine)
    if trained != served:
        raise InputError(f"{loaded.run.root}: its training rows' OCR text was read by {trained!r}, but this "
                         f"export serves {served!r}: train again with this code, or export with the code that trained it")


def export_run(run_dir: Path, output: Path, *, tensorrt_fp16: bool = False, parity_rows: int = PARITY_ROWS,
               check: bool = True, profile: ServingProfile = FP32, profile_reason: str = "asked for") -> ExportResult:
    """Exports a training run into `output` (model_repository/ + bundle/ + MODEL_CARD.md).

    Args:
        run_dir: a folder written by `train`.
        output: the deployment folder; replaced if it exists.
        tensorrt_fp16: enable TensorRT FP16 in the GPU configs (check its parity on the GPU).
        parity_rows: real rows used for the encoders' parity checks (all rows for fusion/LightGBM).
        check: raise ParityError when a bound is missed.
        profile: the serving profile (export.profiles): which graphs are quantised to INT8.
        profile_reason: why this profile, for the manifest (export.profiles.choose_profile's reason).

    Raises:
        InputError: `run_dir` is no complete training run, its OCR text was read by another
            reader than this export serves, or `output` is a file or a folder that holds
            something other than a deployment (it is never deleted then).
        ParityError: an exported graph misses its parity bound (with `check`).
    """
    check_export_paths(run_dir, output)
    loaded = load_run(run_dir)
    check_ocr_reader(loaded)
    if output.exists():
        shutil.rmtree(output)
    paths = export_graphs(loaded, output / REPOSITORY_DIR)
    quantize_graphs(profile, paths)
    parity = check_parity(loaded, paths, parity_rows, profile)
    for result in parity:
        logger.info("parity %s", result.describe())
    if check:
        raise_on_failure(parity)
    write_deployment(loaded, output, paths, parity, tensorrt_fp16, profile, profile_reason)
    return ExportResult(output, parity)
