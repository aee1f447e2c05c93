"""The model repository on a real Triton server over real gRPC."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.bundle import Deployment
from client.images import ImageFetcher
from client.inference import InProcessBackend, TritonBackend
from client.models import ENSEMBLE, TEXT_ENCODER, TEXT_ONLY_ENSEMBLE, served_models
from client.ocr import OcrCache
from client.predict import Predictor
from client.table import read_catalog_csv
from export.triton_config import parse_config
from tests.conftest import PROJECT, SAMPLE


def test_every_committed_config_parses_and_names_its_folder():
    folders = sorted(p.parent.name for p in (PROJECT / "model_repository").glob("*/config.pbtxt"))
    assert folders == sorted(served_models())
    for name in folders:
        config = parse_config(PROJECT / "model_repository" / name / "config.pbtxt")
        assert config.name == name and config.max_batch_size == 64
        if config.platform != "ensemble":
            assert config.dynamic_batching is not None and len(config.instance_group) == 1


@pytest.fixture(scope="module")
def requests_on_real_rows(deployment, tmp_path_factory):
    """Ensemble requests built by the client from 64 real sample rows (with and without images)."""
    loaded = Deployment.load(deployment)
    predictor = Predictor(loaded, InProcessBackend(loaded), ImageFetcher(SAMPLE / "images"),
                          OcrCache(tmp_path_factory.mktemp("ocr") / "ocr.jsonl"), ocr_workers=1)
    table = read_catalog_csv(SAMPLE / "train.csv")
    wave = predictor.prepare(table, np.arange(64))
    requests = predictor.batches(wave, batch_size=16)
    assert {ensemble for ensemble, _, _ in requests} == {ENSEMBLE, TEXT_ONLY_ENSEMBLE}
    return loaded, requests


def test_ensembles_equal_the_in_process_pipeline(triton_server, requests_on_real_rows):
    loaded, requests = requests_on_real_rows
    local = InProcessBackend(loaded)

    async def compare():
        remote = TritonBackend([triton_server.url])
        try:
            for ensemble, _, inputs in requests:
                served = await remote.infer(ensemble, inputs)
                expected = local.run(ensemble, inputs)
                for name, value in expected.items():
                    np.testing.assert_allclose(served[name], value, rtol=1e-5, atol=1e-6, err_msg=f"{ensemble}.{name}")
        finally:
            await remote.close()

    asyncio.run(compare())


def test_wrong_dtype_or_shape_is_refused_and_the_server_stays_ready(triton_server, requests_on_real_rows):
    _, requests = requests_on_real_rows
    _, _, inputs = next(r for r in requests if r[0] == TEXT_ONLY_ENSEMBLE)
    client = grpcclient.InferenceServerClient(triton_server.url)

    def send(name, array):
        tensors = []
        for key, value in {**inputs, name: array}.items():
            tensor = grpcclient.InferInput(key, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        return client.infer(TEXT_ONLY_ENSEMBLE, tensors)

    with pytest.raises(InferenceServerException, match="data-type is 'INT32', but model .* expects 'INT64'"):
        send("input_ids", inputs["input_ids"].astype(np.int32))
    with pytest.raises(InferenceServerException, match="(?i)shape|dims"):
        send("numeric_features", inputs["numeric_features"][:, :5])
    assert client.is_server_ready(client_timeout=5.0)
    assert send("input_ids", inputs["input_ids"]).as_numpy("mlp_log_price").shape == (len(inputs["input_ids"]), 1)


def test_dynamic_batching_merges_concurrent_requests(triton_server, requests_on_real_rows):
    _, requests = requests_on_real_rows
    _, _, inputs = next(r for r in requests if r[0] == TEXT_ONLY_ENSEMBLE)
    one_row = {name: value[:1] for name, value in inputs.items()}
    sync = grpcclient.InferenceServerClient(triton_server.url)

    def counts():
        stats = sync.get_inference_statistics(TEXT_ENCODER, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    async def burst(n):
        client = grpc_aio.InferenceServerClient(triton_server.url)
        try:
            tensors = []
            for name, value in one_row.items():
                tensor = grpc_aio.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
                tensor.set_data_from_numpy(value)
                tensors.append(tensor)
            await asyncio.gather(*(client.infer(TEXT_ONLY_ENSEMBLE, tensors) for _ in range(n)))
        finally:
            await client.close()

    inferences_before, executions_before = counts()
    asyncio.run(burst(32))
    inferences, executions = counts()
    assert inferences - inferences_before == 32
    assert executions - executions_before < 32, "no request was merged into a larger batch"
