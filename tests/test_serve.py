"""The local CPU tritonserver: real server, real gRPC, a tiny ONNX model served by our runner."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from client.errors import ServerStartError
from client.serve import LocalTritonServer, check_numpy_version, cpu_model_repository

onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("needs nvidia-pytriton==0.7.0", allow_module_level=True)

# KIND_GPU on purpose: the server must serve it on CPU (cpu_only rewrites it).
AFFINE_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_GPU, count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""

# Declares a variable width, so Triton lets through rows the graph (width 4) rejects at run time.
LOOSE_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { }
"""


def write_affine_model(folder: Path, config: str) -> None:
    """Writes `folder/config.pbtxt` and an ONNX graph y = x * 2 + 1 over [batch, 4] floats."""
    helper, proto = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", proto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", proto.FLOAT, ["batch", 4])],
        initializer=[
            helper.make_tensor("two", proto.FLOAT, [], [2.0]),
            helper.make_tensor("one", proto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (folder / "1").mkdir(parents=True)
    onnx.save(model, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_repository")
    write_affine_model(root / "affine", AFFINE_CONFIG)
    write_affine_model(root / "loose", LOOSE_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(repository: Path):
    with LocalTritonServer(repository, ready_timeout_s=60) as running:
        yield running


def float_input(rows: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows)
    return tensor


def shm_regions(server: LocalTritonServer) -> list[Path]:
    return list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def live_processes(pgid: int) -> list[str]:
    """Returns `ps` lines of the process group's members that are not zombies."""
    table = subprocess.run(
        ["ps", "-e", "-o", "pgid=,stat=,comm="], capture_output=True, text=True, check=True
    )
    rows = [line.split(None, 2) for line in table.stdout.splitlines()]
    return [" ".join(row) for row in rows if int(row[0]) == pgid and not row[1].startswith("Z")]


def test_server_is_ready_and_serves_the_gpu_config_on_cpu(server: LocalTritonServer) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_server_ready(client_timeout=1.0)
        assert client.is_model_ready("affine") and client.is_model_ready("loose")
        config = client.get_model_config("affine").config
        kinds = [group.kind for group in config.instance_group]
        assert kinds == [model_config_pb2.ModelInstanceGroup.KIND_CPU]


def test_inference_gives_x_times_2_plus_1(server: LocalTritonServer) -> None:
    rows = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with grpcclient.InferenceServerClient(server.url) as client:
        result = client.infer("affine", [float_input(rows)]).as_numpy("y")
    np.testing.assert_array_equal(result, rows * 2 + 1)


@pytest.mark.parametrize(
    ("rows", "datatype"),
    [(np.ones((1, 4), np.float64), "FP64"), (np.ones((1, 5), np.float32), "FP32")],
    ids=["wrong-dtype", "wrong-shape"],
)
def test_bad_request_errors_and_server_stays_ready(
    server: LocalTritonServer, rows: np.ndarray, datatype: str
) -> None:
    with grpcclient.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException):
            client.infer("affine", [float_input(rows, datatype)])
        assert client.is_server_ready(client_timeout=1.0)
        assert client.is_model_ready("affine")


def test_runner_failure_fails_only_that_request(server: LocalTritonServer) -> None:
    good = np.arange(8, dtype=np.float32).reshape(2, 4)
    bad = np.ones((1, 3), np.float32)

    async def infer_all() -> list[np.ndarray | BaseException]:
        async with aioclient.InferenceServerClient(server.url) as client:
            calls = [
                client.infer("loose", [float_input(bad if i == 3 else good)]) for i in range(8)
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
        return [r if isinstance(r, BaseException) else r.as_numpy("y") for r in results]

    results = asyncio.run(infer_all())
    assert isinstance(results[3], InferenceServerException)
    assert "ONNXRuntimeError" in str(results[3])
    for i, result in enumerate(results):
        if i != 3:
            np.testing.assert_array_equal(result, good * 2 + 1)
    with grpcclient.InferenceServerClient(server.url) as client:
        assert client.is_server_ready(client_timeout=1.0)


def test_concurrent_requests_are_batched(server: LocalTritonServer) -> None:
    rows = np.arange(32 * 4, dtype=np.float32).reshape(32, 1, 4)

    async def infer_all() -> tuple[list[np.ndarray], int, int]:
        async with aioclient.InferenceServerClient(server.url) as client:
            before = (await client.get_inference_statistics("affine")).model_stats[0]
            calls = [client.infer("affine", [float_input(row)]) for row in rows]
            results = await asyncio.gather(*calls)
            after = (await client.get_inference_statistics("affine")).model_stats[0]
        inferences = after.inference_count - before.inference_count
        executions = after.execution_count - before.execution_count
        return [result.as_numpy("y") for result in results], inferences, executions

    results, inferences, executions = asyncio.run(infer_all())
    np.testing.assert_array_equal(np.stack(results), rows * 2 + 1)
    assert inferences == 32
    assert executions < inferences, "no execution merged several requests"


def test_numpy_2_is_refused() -> None:
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="numpy<2"):
        check_numpy_version("2.1.3")
    check_numpy_version("1.26.4")
    assert time.monotonic() - started < 1


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="does not exist"):
        LocalTritonServer(tmp_path / "absent").start()


def test_gpu_config_without_cpu_only_fails_with_the_reason(repository: Path) -> None:
    with pytest.raises(ServerStartError, match="KIND_GPU but no GPUs are available"):
        LocalTritonServer(repository, cpu_only=False).start()


def test_cpu_model_repository_rewrites_only_gpu_configs(repository: Path, tmp_path: Path) -> None:
    served, rewritten = cpu_model_repository(repository, tmp_path / "cpu")
    assert rewritten == ["affine"]
    text = (served / "affine" / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (served / "loose").resolve() == (repository / "loose").resolve()
    assert "KIND_GPU" in (repository / "affine" / "config.pbtxt").read_text()


def test_cpu_model_repository_gives_per_core_models_one_single_threaded_instance_per_core(
    repository: Path, tmp_path: Path
) -> None:
    served, rewritten = cpu_model_repository(repository, tmp_path / "cpu", per_core={"loose"}, cores=3)
    assert rewritten == ["affine", "loose"]
    config = text_format.Parse((served / "loose" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [(group.kind, group.count) for group in config.instance_group] == \
        [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 3)]
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    with LocalTritonServer(served, cpu_only=False) as server:  # the real server loads and runs it
        client = grpcclient.InferenceServerClient(server.url)
        assert [group.count for group in client.get_model_config("loose").config.instance_group] == [3]


@pytest.mark.parametrize("crash", [False, True], ids=["stop", "kill-then-stop"])
def test_stop_leaves_no_process_and_no_shared_memory(repository: Path, crash: bool) -> None:
    server = LocalTritonServer(repository).start()
    pgid = server.pid
    try:
        assert shm_regions(server)
        if crash:
            server.kill()
            assert live_processes(pgid) == []
    finally:
        server.stop()
    assert live_processes(pgid) == []
    assert shm_regions(server) == []
