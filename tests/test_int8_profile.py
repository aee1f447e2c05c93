"""The INT8 serving profiles: the sample run exported as `export-bundle` does by default on this
CPU (the INT8 profile it supports), its text encoder quantised, held to its own parity bounds,
named as such, and served by `client predict` in-process and by Triton."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from client.bundle import Deployment
from client.cpu import VNNI_FLAGS, cpu_flags, has_vnni
from client.inference import InProcessBackend
from client.models import TEXT_ENCODER
from client.predict import PredictConfig, predict
from client.serve import LocalTritonServer
from export.cli import main as export_main
from export.parity import MaxAbsDiff, MinCosine, ParityError, raise_on_failure
from export.pipeline import check_parity, load_run
from export.profiles import (
    CPU_INT8,
    CPU_INT8_VNNI,
    FP32,
    INT8_EMBEDDING,
    INT8_LOG_PRICE,
    ServingProfile,
    choose_profile,
)
from export.triton_config import parse_config
from tests.conftest import SAMPLE, input_ids

# what `export-bundle` gives by default here (no CUDA in the test environment)
EXPECTED = CPU_INT8_VNNI if has_vnni() else CPU_INT8


@pytest.fixture(scope="module")
def int8_deployment(sample_run, tmp_path_factory) -> Path:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime has CUDA here: export-bundle's default is fp32")
    output = tmp_path_factory.mktemp("deploy-int8") / "deployment"
    assert export_main([str(sample_run), "-o", str(output)]) == 0
    return output


def test_auto_chooses_fp32_with_cuda_else_the_int8_profile_the_cpu_supports() -> None:
    assert choose_profile(True, frozenset({"avx2", "avx512_vnni"}))[0] is FP32
    for flag in sorted(VNNI_FLAGS):
        profile, reason = choose_profile(False, frozenset({"avx2", flag}))
        assert profile is CPU_INT8_VNNI and flag in reason
    assert choose_profile(False, frozenset({"avx2", "fma"}))[0] is CPU_INT8
    assert CPU_INT8.reduce_range and not CPU_INT8_VNNI.reduce_range and CPU_INT8_VNNI.cpu_flags == VNNI_FLAGS


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_vnni\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert has_vnni(cpu_flags(cpuinfo)) and not has_vnni(frozenset({"avx2"}))


def text_encoder_file(deployment: Path) -> Path:
    return Deployment.load(deployment).model_path(TEXT_ENCODER)


QUANTISED_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv"}


def test_only_the_text_encoder_is_quantised_and_it_is_smaller(deployment, int8_deployment):
    int8_graph = onnx.load(str(text_encoder_file(int8_deployment))).graph
    fp32_graph = onnx.load(str(text_encoder_file(deployment))).graph
    # 5 of each layer's 6 Linear layers x 6 layers, and the price head; the feed-forward
    # down-projections stay fp32
    quantised = [node.name for node in int8_graph.node if node.op_type == "MatMulInteger"]
    assert len(quantised) == 31 and sum("/head/" in name for name in quantised) == 1
    kept = [node.name for node in int8_graph.node if node.op_type == "MatMul" and "/output/dense/" in node.name]
    assert len(kept) == 6
    assert not any(node.op_type in QUANTISED_OPS for node in fp32_graph.node)
    assert text_encoder_file(int8_deployment).stat().st_size < 0.5 * text_encoder_file(deployment).stat().st_size
    assert [(t.name, t.type) for t in (*int8_graph.input, *int8_graph.output)] == \
        [(t.name, t.type) for t in (*fp32_graph.input, *fp32_graph.output)]
    loaded = Deployment.load(int8_deployment)
    for model in ("image_encoder", "fusion", "lexical", "lightgbm", "ocr_detector", "ocr_recognizer"):
        graph = onnx.load(str(loaded.model_path(model))).graph
        assert not any(node.op_type in QUANTISED_OPS for node in graph.node), model


def test_quantised_graph_passes_its_own_declared_bounds(int8_deployment):
    manifest = json.loads((int8_deployment / "bundle" / "manifest.json").read_text())
    text = {p["output"]: p for p in manifest["parity"] if p["model"] == TEXT_ENCODER}
    assert text["text_embedding"]["metric"] == "min_cosine"
    assert text["text_embedding"]["bound"] == INT8_EMBEDDING.bound
    assert text["text_log_price"]["bound"] == INT8_LOG_PRICE.bound
    # quantised for real: further from PyTorch than the float32 bound, within the INT8 one
    assert INT8_EMBEDDING.bound <= text["text_embedding"]["value"] < 0.9999
    assert 1e-4 < text["text_log_price"]["value"] <= INT8_LOG_PRICE.bound
    assert all(p["passed"] for p in manifest["parity"])
    assert all(p["bound"] in (0.9999, 1e-4, 0.0) for p in manifest["parity"] if p["model"] != TEXT_ENCODER)


def test_manifest_model_card_and_config_name_the_profile(deployment, int8_deployment):
    assert Deployment.load(deployment).profile == "fp32"
    loaded = Deployment.load(int8_deployment)
    assert loaded.profile == EXPECTED.name
    assert loaded.manifest["profile_reason"].startswith("auto: no CUDA")
    assert loaded.cpu_flags_needed == EXPECTED.cpu_flags
    assert loaded.manifest["export_cpu"]["vnni"] == sorted(VNNI_FLAGS & cpu_flags())
    assert loaded.manifest["precision"][TEXT_ENCODER] == "int8"
    assert loaded.manifest["precision"]["image_encoder"] == "fp32"
    card = (int8_deployment / "MODEL_CARD.md").read_text()
    assert f"Serving profile: `{EXPECTED.name}`" in card
    assert "Serving profile: `fp32`" in (deployment / "MODEL_CARD.md").read_text()
    config = parse_config(int8_deployment / "model_repository" / TEXT_ENCODER / "config.pbtxt")
    assert config.parameters["precision"].string_value == "int8"
    assert [group.kind for group in config.instance_group] == [config.instance_group[0].KIND_CPU]
    fp32_config = parse_config(deployment / "model_repository" / TEXT_ENCODER / "config.pbtxt")
    assert "precision" not in fp32_config.parameters


def read_prices(path: Path) -> np.ndarray:
    with path.open(newline="", encoding="utf-8") as handle:
        return np.array([float(row["price"]) for row in csv.DictReader(handle)])


def test_client_predict_serves_it_in_process_and_over_triton(deployment, int8_deployment, tmp_path):
    def run(name: str, deployment_dir: Path, urls: list[str]) -> np.ndarray:
        output = tmp_path / f"{name}.csv"
        predict(PredictConfig(input_csv=SAMPLE / "test.csv", output_csv=output, deployment=deployment_dir,
                              urls=urls, images_dir=SAMPLE / "images", cache_dir=tmp_path / "cache",
                              progress=False))
        return read_prices(output)

    fp32 = run("fp32", deployment, [])
    in_process = run("int8", int8_deployment, [])
    with LocalTritonServer(int8_deployment / "model_repository", work_dir=tmp_path / "triton") as server:
        served = run("int8-triton", int8_deployment, [server.url])
    assert len(in_process) == len(served) == len(fp32) == len(input_ids(SAMPLE / "test.csv"))
    assert np.all(np.isfinite(in_process) & (in_process > 0)) and np.all(np.isfinite(served) & (served > 0))
    shift = np.abs(np.log(in_process) - np.log(fp32))
    assert 0 < np.median(shift) < 0.05  # quantisation moves prices, a little
    # Triton may merge requests into other batches, and the activations' scales are per batch
    assert np.median(np.abs(np.log(served) - np.log(in_process))) < 0.02


def test_a_quantised_graph_missing_its_bound_fails_naming_model_output_and_worst_row(sample_run, int8_deployment):
    strict = ServingProfile("strict-int8", "float32 bounds for an INT8 graph",
                            {TEXT_ENCODER: {"text_embedding": MinCosine(0.9999), "text_log_price": MaxAbsDiff(1e-4)}})
    loaded = load_run(sample_run)
    deployment = Deployment.load(int8_deployment)
    paths = {name: deployment.model_path(name) for name in loaded.exporters}
    results = check_parity(loaded, paths, profile=strict)
    with pytest.raises(ParityError, match=r"text_encoder\.text_embedding: min_cosine=.*worst row \d+.*FAILED"):
        raise_on_failure(results)


def test_a_cpu_without_the_profile_s_flags_is_warned(int8_deployment, tmp_path, caplog):
    """A deployment built for CPUs with some instruction says so when it is loaded on a CPU without it."""
    copy = tmp_path / "deployment"
    shutil.copytree(int8_deployment, copy)
    manifest_path = copy / "bundle" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["profile_cpu_flags"] = ["no_cpu_has_this_flag"]
    manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="client.inference"):
        InProcessBackend(Deployment.load(copy))
    assert "no_cpu_has_this_flag" in caplog.text and "--profile cpu-int8" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="client.inference"):
        InProcessBackend(Deployment.load(int8_deployment))  # built here: this CPU has what it needs
    assert "profile is built for CPUs" not in caplog.text
