"""MODEL_CARD.md: what was trained on what, how well it does, how faithful the export is."""

from __future__ import annotations

from pathlib import Path

from client.bundle import ServingSettings
from training.config import TrainConfig

CARD_FILE = "MODEL_CARD.md"


def write_model_card(root: Path, config: TrainConfig, report: dict, details: dict, settings: ServingSettings) -> Path:
    rows = report["rows"]
    smape_rows = "\n".join(f"| {name} | {value:.2f} |" for name, value in report["validation_smape"].items())
    parity_rows = "\n".join(
        f"| {p['model']} | {p['output']} | {p['metric']} | {p['value']:.6g} | {p['bound']:g} | "
        f"{p['max_abs_diff']:.3g} | {p['batch_max_abs_diff']:.3g} | {'yes' if p['passed'] else 'NO'} |"
        for p in details["parity"]
    )
    weights = ", ".join(f"{name} {w:.2f}" for name, w in report["blend_weights"]["fitted"].items())
    image_model = details["source_models"]["image_encoder"]["name"]
    pooling = " + ".join(details["source_models"]["text_encoder"]["pooling"])
    text = f"""# Model card

## Training data
- CSV: `{config.csv}`; images: `{config.images_dir}`
- Rows: {rows['total']}, split grouped by image_link (seed {config.seed}): {rows['fit']} fit rows
  (every component trains on these only), {rows['blend']} blend rows (unseen by every component;
  the blend weights are fitted on them), {rows['validation']} validation rows (only scored);
  rows skipped for a bad price: {rows['skipped_bad_price']}
- Images usable: {report['images']['with_image']}; OCR engine `{config.ocr_engine}`, text found on
  {report['ocr']['rows_with_text']} images

## Models
- Image encoder: `{image_model}` ({settings.image_dim}-d, 3-view TTA inside the graph, input
  uint8 {settings.image_size}x{settings.image_size} RGB)
- Text encoder: `{details['source_models']['base_text_encoder']['name']}` fine-tuned on log1p(price) with a linear price head
  ({settings.text_dim}-d, {pooling} pooling, at most {settings.max_tokens} tokens)
- Fusion MLP and LightGBM on log1p(price) over the fine-tuned embeddings; FAISS retrieval
  (k={settings.retrieval_k}) over the fit rows; lexical model: TF-IDF of hashed word-piece
  n-grams + Ridge
- Blend weights in use: {weights}

## Validation SMAPE (0-200, lower is better)
| estimate | SMAPE |
|---|---|
{smape_rows}

No model or blend weight was fitted on these rows; the median-price baseline scores
{report['baseline_median_smape']:.2f} on them.

## Export parity (ONNX Runtime CPU vs PyTorch / LightGBM, real rows, files reloaded)
| model | output | metric | value | bound | max abs diff | max diff across batch sizes {list(details['parity'][0]['batch_sizes'])} | passed |
|---|---|---|---|---|---|---|---|
{parity_rows}

## Limits
- Offline, the image encoder is ImageNet EfficientNet-Lite0, not CLIP: no CLIP weights load
  without a model hub. Production should train with `--image-encoder openai/clip-vit-base-patch32`.
- Prices are predicted in log space and floored at 0.01.
- Trained on {rows['fit']} rows; accuracy on other catalogues is unmeasured.
"""
    path = root / CARD_FILE
    path.write_text(text)
    return path
