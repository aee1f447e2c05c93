"""The GPU check's CPU-side steps (its dry run), on the session's real deployment and training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from client.models import ENSEMBLE, FUSION, IMAGE_ENCODER, LIGHTGBM, OCR_MODELS, TEXT_ENCODER, TEXT_ONLY_ENSEMBLE
from export.gpu_check import (
    DRY_RUN_SIZES,
    FP32_BOUNDS,
    TENSORRT_MODELS,
    TORCH_MODELS,
    Reference,
    main,
    tensorrt_options,
)
from tests.conftest import PROJECT

GPU_ENTRIES = ("onnxruntime-cuda", "onnxruntime-tensorrt-fp16", "torch-cuda")


def assert_within_fp32_bounds(results: list[dict]) -> None:
    for result in results:
        assert result["passed"], result
        if result["metric"] == "min_cosine":
            assert result["value"] >= FP32_BOUNDS.min_cosine
        elif result["metric"] == "max_abs_diff":
            assert result["value"] <= max(FP32_BOUNDS.log_price, FP32_BOUNDS.probability)
        assert result["rows"] > 0


def assert_real_throughput(entry: dict) -> None:
    assert entry["status"] == "run"
    figures = {(f["ensemble"], f["batch"], f["concurrency"]): f["rows_per_s"] for f in entry["figures"]}
    assert set(figures) == {(e, b, c) for e in (ENSEMBLE, TEXT_ONLY_ENSEMBLE)
                            for b in DRY_RUN_SIZES.batch_sizes for c in DRY_RUN_SIZES.concurrency}
    assert all(rate > 0 for rate in figures.values())


@pytest.fixture(scope="module")
def dry_run_report(deployment, sample_run, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("gpu-check") / "gpu_check.json"
    assert main(["--dry-run", "--deployment", str(deployment), "--training-run", str(sample_run),
                 "-o", str(output)]) == 0
    return json.loads(output.read_text())


def test_dry_run_marks_the_gpu_entries_as_not_run(dry_run_report):
    assert dry_run_report["dry_run"] is True
    for name in GPU_ENTRIES:
        assert dry_run_report["parity"][name]["status"] == "not run"
        assert dry_run_report["parity"][name]["reason"].startswith("dry run")
    assert dry_run_report["environment"]["onnxruntime_providers"]
    assert dry_run_report["rows"][TEXT_ONLY_ENSEMBLE] == DRY_RUN_SIZES.rows
    assert 0 < dry_run_report["rows"][ENSEMBLE] <= DRY_RUN_SIZES.rows


def test_dry_run_compares_every_served_graph_with_the_cpu(dry_run_report):
    entry = dry_run_report["parity"]["cpu-as-onnxruntime-cuda"]
    assert entry["stands_in_for"] == "onnxruntime-cuda" and entry["passed"]
    assert {r["model"] for r in entry["results"]} == {IMAGE_ENCODER, TEXT_ENCODER, FUSION, LIGHTGBM, "lexical",
                                                       *OCR_MODELS}
    assert_within_fp32_bounds(entry["results"])
    assert_real_throughput(dry_run_report["throughput"]["cpu-as-onnxruntime-cuda"])


def test_dry_run_compares_the_pytorch_models_with_the_onnx_graphs(dry_run_report):
    entry = dry_run_report["parity"]["torch-cpu-as-torch-cuda"]
    assert {r["model"] for r in entry["results"]} == set(TORCH_MODELS)
    assert_within_fp32_bounds(entry["results"])
    # PyTorch and ONNX Runtime are different kernels: the figures are measured, not copies
    assert max(r["max_abs_diff"] for r in entry["results"]) > 0
    assert_real_throughput(dry_run_report["throughput"]["torch-cpu-as-torch-cuda"])


def test_dry_run_serves_the_ensembles_on_the_real_triton_server(dry_run_report):
    triton = dry_run_report["triton"]
    assert triton["status"] == "run" and triton["instances"] == "CPU"
    assert {r["model"] for r in triton["parity"]["results"]} == {ENSEMBLE, TEXT_ONLY_ENSEMBLE}
    assert_within_fp32_bounds(triton["parity"]["results"])
    assert_real_throughput(triton["throughput"])
    assert dry_run_report["parity_passed"] is True


def test_tensorrt_profiles_span_batch_1_to_64_at_the_recorded_shapes(tmp_path):
    feeds = {IMAGE_ENCODER: {"image": np.zeros((3, 256, 256, 3), np.uint8)},
             TEXT_ENCODER: {"input_ids": np.zeros((5, 17), np.int64), "attention_mask": np.zeros((5, 17), np.int64)},
             FUSION: {"has_image": np.zeros((2, 1), np.float32)}}
    reference = Reference({model: [(feed, {})] for model, feed in feeds.items()}, {}, {}, "none")
    options = tensorrt_options(reference, tmp_path)
    assert set(options) == set(TENSORRT_MODELS)
    text = options[TEXT_ENCODER]
    assert text["trt_fp16_enable"] is True
    assert text["trt_profile_min_shapes"] == "input_ids:1x17,attention_mask:1x17"
    assert text["trt_profile_max_shapes"] == "input_ids:64x17,attention_mask:64x17"
    assert options[IMAGE_ENCODER]["trt_profile_opt_shapes"] == "image:32x256x256x3"


def test_shell_script_parses_and_runs_the_dry_run(deployment, tmp_path):
    script = PROJECT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    output = tmp_path / "gpu_check.json"
    done = subprocess.run([str(script), "--dry-run", "--no-triton", "--rows", "4", "--deployment", str(deployment),
                           "-o", str(output)], env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["parity"]["cpu-as-onnxruntime-cuda"]["passed"]
    assert report["triton"] == {"status": "not run", "reason": "--no-triton"}
