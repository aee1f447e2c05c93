"""Triton `config.pbtxt` files, generated from the model specs in `client.models`.

The production profile is a GPU node running the onnxruntime backend: the neural models on
`KIND_GPU`, LightGBM on `KIND_CPU` (ONNX Runtime's TreeEnsemble has no CUDA kernel), dynamic
batching and warm-up on every composing model, and the ensembles chaining them. TensorRT FP16
is opt-in (`tensorrt_fp16=True`), since its parity must be checked on the GPU it runs on.
A graph quantised for CPU INT8 (export.profiles) runs on `KIND_CPU` instances and says so in a
`precision: int8` parameter.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.bundle import MODEL_SHA_PARAMETER, PRECISION_PARAMETER
from client.models import LEXICAL, LIGHTGBM, MAX_BATCH_SIZE, ModelDims, ModelSpec, served_models

CONFIG_FILE = "config.pbtxt"
MAX_QUEUE_DELAY_US = 2000
WARMUP_BATCH = 8
WARMUP_DYNAMIC_SIZE = 32  # every dynamic axis; the OCR detector needs multiples of 32 (16 x 16 fails)

_DTYPES = {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32, "int64": mc.TYPE_INT64}


def _tensor(spec, cls):
    return cls(name=spec.name, data_type=_DTYPES[spec.dtype], dims=list(spec.shape))


def _warmup(spec: ModelSpec) -> mc.ModelWarmup:
    warmup = mc.ModelWarmup(name=f"{spec.name}_warmup", batch_size=WARMUP_BATCH)
    for tensor in spec.inputs:
        warmup.inputs[tensor.name].CopyFrom(
            mc.ModelWarmup.Input(
                data_type=_DTYPES[tensor.dtype],
                dims=[WARMUP_DYNAMIC_SIZE if d == -1 else d for d in tensor.shape],
                zero_data=True,
            )
        )
    return warmup


def model_config(spec: ModelSpec, *, tensorrt_fp16: bool = False, model_sha256: str | None = None,
                 int8: bool = False) -> mc.ModelConfig:
    """The ModelConfig of one served model (an ensemble when `spec.steps` is set); `int8`: its graph
    is quantised for CPU INT8 (MatMulInteger), so it runs on CPU instances, never under TensorRT."""
    config = mc.ModelConfig(
        name=spec.name,
        max_batch_size=MAX_BATCH_SIZE,
        input=[_tensor(t, mc.ModelInput) for t in spec.inputs],
        output=[_tensor(t, mc.ModelOutput) for t in spec.outputs],
    )
    if spec.is_ensemble:
        config.platform = "ensemble"
        for model, inputs, outputs in spec.steps:
            config.ensemble_scheduling.step.append(
                mc.ModelEnsembling.Step(model_name=model, model_version=-1, input_map=inputs, output_map=outputs)
            )
        return config

    config.platform = "onnxruntime_onnx"
    on_gpu = spec.name != LIGHTGBM and not int8
    config.instance_group.append(
        mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU)
    )
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    config.model_warmup.append(_warmup(spec))
    # the lexical graph hashes int64 n-gram keys and sums TF-IDF terms: no case for FP16
    if tensorrt_fp16 and on_gpu and spec.name != LEXICAL:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    if model_sha256:
        config.parameters[MODEL_SHA_PARAMETER].string_value = model_sha256
    if int8:
        config.parameters[PRECISION_PARAMETER].string_value = "int8"
    return config


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(path: Path) -> mc.ModelConfig:
    """Parses a config.pbtxt into tritonclient's ModelConfig message."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def write_repository_configs(
    repository: Path,
    dims: ModelDims = ModelDims(),
    *,
    tensorrt_fp16: bool = False,
    model_sha256: dict[str, str] | None = None,
    int8_models: Collection[str] = (),
) -> list[Path]:
    """Writes `<repository>/<model>/config.pbtxt` for every served model; returns the paths.
    `int8_models`: the models whose graphs are quantised for CPU INT8."""
    paths = []
    for spec in served_models(dims).values():
        sha = (model_sha256 or {}).get(spec.name)
        path = repository / spec.name / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        config = model_config(spec, tensorrt_fp16=tensorrt_fp16, model_sha256=sha, int8=spec.name in int8_models)
        path.write_text(config_text(config))
        paths.append(path)
    return paths
