"""MODEL_CARD.md: what was trained on what, how well it does, how faithful the export is."""

from __future__ import annotations

from pathlib import Path

from client.bundle import ServingSettings
from export.profiles import PROFILES
from training.config import TrainConfig

CARD_FILE = "MODEL_CARD.md"


def write_model_card(root: Path, config: TrainConfig, report: dict, details: dict, settings: ServingSettings) -> Path:
    rows = report["rows"]
    oof = report["oof_smape"]
    smape_rows = "\n".join(
        f"| {name} | {score['all']:.2f} | {min(score['folds']):.2f}-{max(score['folds']):.2f} | "
        f"{report['validation_smape'][name]:.2f} |" if report["validation_smape"] else
        f"| {name} | {score['all']:.2f} | {min(score['folds']):.2f}-{max(score['folds']):.2f} | - |"
        for name, score in oof.items()
    )
    folds = report["folds"]
    honest_blend = report["blend_cross_fitted_smape"]
    parity_rows = "\n".join(
        f"| {p['model']} | {p['output']} | {p['metric']} | {p['value']:.6g} | {p['bound']:g} | "
        f"{p['max_abs_diff']:.3g} | {p['batch_max_abs_diff']:.3g} | {'yes' if p['passed'] else 'NO'} |"
        for p in details["parity"]
    )
    weights = ", ".join(f"{name} {w:.2f}" for name, w in report["blend_weights"]["fitted"].items())
    profile = PROFILES[details["profile"]]
    image_model = details["source_models"]["image_encoder"]["name"]
    pooling = " + ".join(details["source_models"]["text_encoder"]["pooling"])
    # runs from before the precision setting recorded none: they all trained in float32
    precision = report["training"].get("fine_tuning_precision", "fp32")
    text = f"""# Model card

## Training data
- CSV: `{config.csv}`; images: `{config.images_dir}`
- Rows: {rows['total']}; every model was refitted on all {rows['labelled']} labelled rows after
  cross-fitting on {folds['k']} folds grouped by image_link (seed {config.seed}; the text encoder
  fine-tuned in each fold too); {rows['validation']} validation rows held out
  from everything; rows skipped for a bad price: {rows['skipped_bad_price']}
- Images usable: {report['images']['with_image']}; OCR engine `{config.ocr_engine}`
  (`{report['ocr'].get('reader', config.ocr_engine)}`; PP-OCR's detector and recogniser are served as
  `ocr_detector` and `ocr_recognizer`), text found on
  {report['ocr']['rows_with_text']} images. What OCR is worth (measured 2026-12-07, 5,540 rows, 5 grouped
  folds, 1,388 rows held out; README, "What OCR is worth"): the blend's out-of-fold SMAPE on the 666
  rows with a photo 56.64 with the text read off the photos, 56.00 without (all rows 56.30 / 56.08),
  held out 52.79 / 52.83: no better with it, so training reads none by default (`--ocr none`)

## Models
- Image encoder: `{image_model}` ({settings.image_dim}-d, 3-view TTA inside the graph, input
  uint8 {settings.image_size}x{settings.image_size} RGB)
- Text encoder: `{details['source_models']['base_text_encoder']['name']}` fine-tuned on log1p(price) with a linear price head
  ({settings.text_dim}-d, {pooling} pooling, at most {settings.max_tokens} tokens; training steps in
  {precision}, weights and served graph float32)
- Fusion MLP on log1p(price) over the fine-tuned embeddings, the image embedding and catalogue
  features; FAISS retrieval (k={settings.retrieval_k}) over every labelled row; lexical model:
  TF-IDF of hashed word-piece n-grams + Ridge; a LightGBM stacker over the text head's and the lexical
  model's estimates, the catalogue features and price priors (brand and unit-price means
  of the labelled rows), trained on their out-of-fold values
- Blend weights in use: {weights}
- Serving profile: `{details['profile']}` ({details['profile_reason']}): {profile.summary}

## SMAPE (0-200, lower is better)
Out of fold: each row estimated by models that never saw it (fitted on the other folds).
Validation: the deployed models on the held-out rows, when there are any.

| estimate | out of fold | folds min-max | validation |
|---|---|---|---|
{smape_rows}

The fitted blend's weights were fitted on these same OOF estimates; fitted on the other folds
only and scored on each fold in turn it scores {honest_blend['all']:.2f}
({min(honest_blend['folds']):.2f}-{max(honest_blend['folds']):.2f}). Predicting the other folds'
median price scores {report['baseline_median_smape']:.2f}.

## Export parity (ONNX Runtime CPU vs PyTorch / LightGBM, real rows, files reloaded)
A graph quantised to INT8 is held to its profile's looser bounds.

| model | output | metric | value | bound | max abs diff | max diff across batch sizes {list(details['parity'][0]['batch_sizes'])} | passed |
|---|---|---|---|---|---|---|---|
{parity_rows}

## Limits
- Offline, the image encoder is ImageNet EfficientNet-Lite0, not CLIP: no CLIP weights load
  without a model hub. Production should train with `--image-encoder openai/clip-vit-base-patch32`.
- Prices are predicted in log space and floored at 0.01.
- Trained on {rows['labelled']} rows; accuracy on other catalogues is unmeasured.
"""
    path = root / CARD_FILE
    path.write_text(text)
    return path
