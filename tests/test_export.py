"""Export: parity on real rows (batch sizes included), checksums, configs, and the CLIP path."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from client.bundle import Deployment
from client.errors import BundleError
from client.images import ImageFetcher, load_images
from client.models import ModelDims, served_models
from client.table import read_catalog_csv
from export.onnx_export import EMBEDDING, TorchExporter
from export.parity import BATCH_SIZES, MinCosine, compare, load_session, run_in_batches
from export.triton_config import parse_config
from tests.conftest import PROJECT, SAMPLE

ONNX_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


def test_parity_figures_meet_the_bounds_for_every_graph(deployment, sample_run):
    manifest = json.loads((deployment / "bundle" / "manifest.json").read_text())
    checked = {(p["model"], p["output"]) for p in manifest["parity"]}
    assert checked == {("image_encoder", "image_embedding"), ("text_encoder", "text_embedding"),
                       ("text_encoder", "text_log_price"), ("lexical", "lexical_log_price"),
                       ("fusion", "mlp_log_price"), ("fusion", "retrieval_vector"),
                       ("lightgbm", "gbm_log_price")}
    for parity in manifest["parity"]:
        assert parity["passed"], parity
        assert tuple(parity["batch_sizes"]) == BATCH_SIZES
        assert parity["rows"] >= 50
    card = (deployment / "MODEL_CARD.md").read_text()
    assert "Export parity" in card and "image_encoder" in card
    precision = json.loads((sample_run / "report.json").read_text())["training"]["fine_tuning_precision"]
    assert f"training steps in\n  {precision}," in card


def test_exported_image_encoder_matches_pytorch_at_every_batch_size(deployment):
    """An independent re-check on real photos, with the file reloaded from disk."""
    from training.encoders import load_image_encoder

    table = read_catalog_csv(SAMPLE / "train.csv")
    prepared = load_images(ImageFetcher(SAMPLE / "images"), table.image_links)
    pixels = np.stack([p.pixels for p in prepared if p.has_image][:9])
    encoder, _ = load_image_encoder()
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(pixels)).numpy()
    session = load_session(str(deployment / "model_repository" / "image_encoder" / "1" / "model.onnx"))
    runs = {size: run_in_batches(session, {"image": pixels}, size)[0] for size in (1, 7, 9)}
    result = compare("image_encoder", "image_embedding", reference, runs, MinCosine(0.9999))
    assert result.passed and result.value >= 0.9999 and result.rows == 9


def test_graph_io_matches_the_triton_configs(deployment):
    dims = Deployment.load(deployment).settings.dims
    for name, spec in served_models(dims).items():
        config = parse_config(deployment / "model_repository" / name / "config.pbtxt")
        config_tensors = [*config.input, *config.output]
        spec_tensors = [*spec.inputs, *spec.outputs]
        assert [(t.name, list(t.dims)) for t in config_tensors] == [(t.name, list(t.shape)) for t in spec_tensors]
        if spec.is_ensemble:
            continue
        graph = onnx.load(str(deployment / "model_repository" / name / "1" / "model.onnx")).graph
        graph_tensors = {v.name: v.type.tensor_type for v in (*graph.input, *graph.output)}
        for tensor in spec_tensors:
            graph_tensor = graph_tensors[tensor.name]
            graph_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in graph_tensor.shape.dim]
            assert ONNX_DTYPES[graph_tensor.elem_type] == tensor.dtype, (name, tensor.name)
            assert graph_dims == [-1, *tensor.shape], (name, tensor.name, graph_dims)


def test_committed_repository_is_what_export_generates_for_the_offline_defaults(deployment):
    for name in served_models(ModelDims()):
        committed = parse_config(PROJECT / "model_repository" / name / "config.pbtxt")
        exported = parse_config(deployment / "model_repository" / name / "config.pbtxt")
        exported.parameters.clear()  # export adds each model file's SHA-256
        assert committed == exported, name


def test_tampered_bundle_file_is_detected(deployment_copy):
    Deployment.load(deployment_copy)
    blend = deployment_copy / "bundle" / "blend.json"
    blend.write_text(blend.read_text().replace("0.", "0.9", 1))
    (deployment_copy / "bundle" / "extra.txt").write_text("not exported")
    with pytest.raises(BundleError) as error:
        Deployment.load(deployment_copy)
    assert "checksum mismatch: bundle/blend.json" in str(error.value)
    assert "not in the manifest: bundle/extra.txt" in str(error.value)


def test_tiny_clip_image_encoder_exports_and_matches(tmp_path):
    """No CLIP weights load offline: a tiny random CLIPModel, saved and reloaded the real way."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from training.encoders import load_image_encoder

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 160, "patch_size": 32},
        projection_dim=24,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "tiny-clip")
    with pytest.raises(ValueError, match="no preprocessor_config.json"):
        load_image_encoder(str(tmp_path / "tiny-clip"))
    # a checkpoint that reads 160 pixels with its own normalisation, not CLIP ViT-B/32's 224
    processor = CLIPImageProcessor(crop_size={"height": 160, "width": 160}, size={"shortest_edge": 160},
                                   image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(tmp_path / "tiny-clip")
    encoder, identity = load_image_encoder(str(tmp_path / "tiny-clip"))
    assert identity["embedding_dim"] == 24
    assert (encoder.views.crop_size, encoder.views.zoom_crop_size) == (160, 137)
    np.testing.assert_allclose(encoder.mean.flatten().numpy(), [127.5, 102.0, 76.5], rtol=1e-6)
    np.testing.assert_allclose(encoder.std.flatten().numpy(), [51.0, 63.75, 76.5], rtol=1e-6)

    table = read_catalog_csv(SAMPLE / "train.csv")
    prepared = load_images(ImageFetcher(SAMPLE / "images"), table.image_links)
    pixels = np.stack([p.pixels for p in prepared if p.has_image][:8])
    exporter = TorchExporter("image_encoder", ModelDims(image_dim=24), {"image_embedding": EMBEDDING})
    path = exporter.export(encoder, tmp_path / "clip.onnx")
    with torch.inference_mode():
        reference = encoder(torch.from_numpy(pixels)).numpy()
    session = load_session(str(path))
    runs = {size: run_in_batches(session, {"image": pixels}, size)[0] for size in (1, 7, 8)}
    result = compare("image_encoder", "image_embedding", reference, runs, EMBEDDING)
    assert result.passed, result.describe()
    assert runs[8].shape == (8, 24)


def test_lightgbm_rows_on_a_rounded_threshold_take_lightgbms_branch(tmp_path):
    """Rounding float64 thresholds to the nearest float32 sends rows that sit between the two
    down the other branch; the exporter rounds each threshold down instead."""
    import lightgbm as lgb

    from export.onnx_export import LightGbmExporter, split_stack_features

    dims = ModelDims(numeric_dim=1)  # the stacker reads 2 estimates, has_image, 1 numeric feature and the priors
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, dims.stack_dim)).astype(np.float32)
    target = features[:, 0] * 2 + np.sin(features[:, 1] * 3)
    booster = lgb.train({"objective": "regression", "num_leaves": 31, "verbosity": -1, "seed": 0},
                        lgb.Dataset(features, target), num_boost_round=50)
    # adversarial rows: a feature exactly at the nearest float32 above a split's float64 threshold
    rows = []
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                nearest = np.float32(node["threshold"])
                if float(nearest) > node["threshold"]:
                    row = features[len(rows) % len(features)].copy()
                    row[node["split_feature"]] = nearest
                    rows.append(row)
                stack += [node["left_child"], node["right_child"]]
    assert len(rows) > 20
    rows = np.stack(rows)

    path = LightGbmExporter(dims).export(booster, tmp_path / "lightgbm.onnx")
    exported = load_session(str(path)).run(None, split_stack_features(rows, dims))[0][:, 0]
    np.testing.assert_allclose(exported, booster.predict(rows), atol=1e-5)


def test_a_run_trained_before_text_encoders_recorded_their_pooling_is_refused(sample_run, tmp_path):
    """Such a run's text_encoder/ has no modules.json but was trained mean-pooled and normalised:
    exporting it as a plain transformers folder would serve other embeddings than it trained on."""
    from export.pipeline import load_run

    run_info = json.loads((sample_run / "run.json").read_text())
    assert run_info["models"]["base_text_encoder"]["pooling"] == ["mean"]
    del run_info["models"]["base_text_encoder"]["pooling"]
    (tmp_path / "run.json").write_text(json.dumps(run_info))
    with pytest.raises(ValueError, match="train it again"):
        load_run(tmp_path)


def test_a_run_whose_ocr_text_another_reader_read_is_refused(sample_run, tmp_path):
    """Its models learnt from OCR text that the graphs this export serves would not give them."""
    from client.errors import InputError
    from export.pipeline import export_run

    run = tmp_path / "run"
    run.mkdir()
    for entry in sample_run.iterdir():
        if entry.name != "report.json":
            (run / entry.name).symlink_to(entry)
    report = json.loads((sample_run / "report.json").read_text())
    served = report["ocr"]["reader"]
    report["ocr"]["reader"] = served.replace("det-int8/", "")  # as main read it before the detector was INT8
    (run / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="train again with this code") as refused:
        export_run(run, tmp_path / "deployment")
    assert served in str(refused.value) and report["ocr"]["reader"] in str(refused.value)
    assert not (tmp_path / "deployment").exists()
