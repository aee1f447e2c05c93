"""ONNX export of each served model: an exporter per model names its inputs, outputs and dynamic
axes (from the model's ModelSpec), builds example inputs, writes one self-contained `.onnx` file,
and declares the parity each output must keep with the source model (`tolerances`)."""

from __future__ import annotations

import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import torch
from torch import nn

from client.models import (
    FUSION,
    IMAGE_ENCODER,
    LEXICAL,
    LIGHTGBM,
    OCR_DETECTOR,
    OCR_RECOGNIZER,
    TEXT_ENCODER,
    ModelDims,
    ModelSpec,
    served_models,
)
from client.ppocr import ppocr_graphs
from export.parity import FractionWithin, MaxAbsDiff, MinCosine, Tolerance

OPSET = 17
EXPORT_BATCH = 3  # >= 2: exporting with a batch of 1 can freeze the batch axis
EMBEDDING = MinCosine(0.9999)
LOG_PRICE = MaxAbsDiff(1e-4)
# TorchScript tracing warns wherever a tensor becomes a Python value or a constant: in these
# models those are shapes and flags (e.g. inside transformers' attention masks), which the parity
# checks on real rows at several batch and sequence lengths cover; nothing a user could change.
_UNACTIONABLE_TRACER_WARNINGS = r"(Converting a tensor to a Python|torch\.tensor results are registered as constants)"


class OnnxExporter(ABC):
    """Exports one served model to `path`, with the tensor names of its ModelSpec.

    Args:
        model_name: the served model (a key of client.models.served_models).
        dims: the widths of the chosen encoders.
        tolerances: for each output of the model, how close ONNX Runtime must stay to the source.

    Raises:
        ValueError: `tolerances` does not name exactly the model's outputs.
    """

    def __init__(self, model_name: str, dims: ModelDims, tolerances: Mapping[str, Tolerance]):
        self.spec: ModelSpec = served_models(dims)[model_name]
        self.dims = dims
        outputs = [tensor.name for tensor in self.spec.outputs]
        if set(tolerances) != set(outputs):
            raise ValueError(f"{model_name}: declare one tolerance per output {outputs}, not {sorted(tolerances)}")
        self.tolerances = dict(tolerances)

    @property
    def model_name(self) -> str:
        return self.spec.name

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {}
        for tensor in (*self.spec.inputs, *self.spec.outputs):
            axes[tensor.name] = {0: "batch"} | {i + 1: f"{tensor.name}_{i + 1}" for i, d in enumerate(tensor.shape) if d == -1}
        return axes

    @abstractmethod
    def export(self, model, path: Path) -> Path: ...

    def _declare_shapes(self, model: onnx.ModelProto) -> None:
        """Writes the spec's shapes onto the graph's inputs and outputs.

        Exporters leave some static widths symbolic (e.g. after a division) and some batch axes
        unnamed; Triton and the tests compare these shapes with the configs.
        """
        declared = {t.name: t.shape for t in (*self.spec.inputs, *self.spec.outputs)}
        for value in (*model.graph.input, *model.graph.output):
            dims = value.type.tensor_type.shape.dim
            dims[0].dim_param = "batch"
            for dim, size in zip(dims[1:], declared[value.name]):
                if size != -1:
                    dim.dim_value = size


class TorchExporter(OnnxExporter):
    """Exports an nn.Module in eval mode with the TorchScript exporter (dynamo=False: the dynamo
    exporter needs `onnxscript`), weights inside the file (external_data=False)."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        tensors = []
        for tensor in self.spec.inputs:
            shape = (EXPORT_BATCH, *(16 if d == -1 else d for d in tensor.shape))
            if tensor.dtype == "uint8":
                tensors.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator))
            elif tensor.name == "attention_mask":
                tensors.append(torch.ones(shape, dtype=torch.int64))
            elif tensor.dtype == "int64":
                tensors.append(torch.randint(1000, 2000, shape, dtype=torch.int64, generator=generator))
            else:
                tensors.append(torch.rand(shape, generator=generator))
        return tuple(tensors)

    def export(self, model: nn.Module, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", _UNACTIONABLE_TRACER_WARNINGS, category=torch.jit.TracerWarning)
            torch.onnx.export(
                model.eval(),
                self.example_inputs(),
                str(path),
                input_names=[t.name for t in self.spec.inputs],
                output_names=[t.name for t in self.spec.outputs],
                dynamic_axes=self.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
                external_data=False,
            )
        exported = onnx.load(str(path))
        self._declare_shapes(exported)
        onnx.checker.check_model(exported, full_check=True)
        onnx.save(exported, str(path))
        return path


class LightGbmExporter(OnnxExporter):
    """Converts the LightGBM stacker with onnxmltools (ai.onnx.ml TreeEnsembleRegressor), behind a
    Concat node that joins the spec's inputs into the one feature vector the trees read.

    With `split`, the trees go into TreeEnsemble nodes of at most that many trees whose outputs
    are summed, which bounds the float32 accumulation error of large ensembles (onnxmltools
    refuses a split larger than the tree count, so small models are converted whole). The
    converter names its output `variable`; it is renamed to the spec's output name.
    """

    FEATURES = "stack_features"

    def __init__(self, dims: ModelDims, split: int | None = 100, tolerance: Tolerance = FractionWithin()):
        super().__init__(LIGHTGBM, dims, {"gbm_log_price": tolerance})
        self.split = split

    def export(self, booster: lgb.Booster, path: Path) -> Path:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        booster = float32_exact_thresholds(booster)
        (output,) = self.spec.outputs
        onnx_model = convert_lightgbm(
            booster,
            initial_types=[(self.FEATURES, FloatTensorType([None, self.dims.stack_dim]))],
            split=self.split if self.split and booster.num_trees() > self.split else None,
        )
        produced = onnx_model.graph.output[0].name
        for node in onnx_model.graph.node:
            node.output[:] = [output.name if name == produced else name for name in node.output]
        onnx_model.graph.output[0].name = output.name
        graph = onnx_model.graph
        graph.node.insert(0, onnx.helper.make_node(
            "Concat", [t.name for t in self.spec.inputs], [self.FEATURES], axis=1, name="join_stack_features"))
        del graph.input[:]
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, [None, *t.shape])
                           for t in self.spec.inputs)
        self._declare_shapes(onnx_model)
        onnx.checker.check_model(onnx_model, full_check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onnx_model, str(path))
        return path


class PpOcrExporter(OnnxExporter):
    """Writes one of PP-OCR's two graphs, as client.ppocr.ppocr_graphs builds them from the
    rapidocr wheel's files (served tensor names; the recogniser ending in ArgMax / ReduceMax),
    with the spec's shapes. Nothing is trained: `export` takes no source model."""

    def __init__(self, model_name: str, dims: ModelDims):
        outputs = [tensor.name for tensor in served_models(dims)[model_name].outputs]
        super().__init__(model_name, dims, {name: MaxAbsDiff(0.0) for name in outputs})

    def export(self, model: None, path: Path) -> Path:
        graph = ppocr_graphs()[self.model_name]
        self._declare_shapes(graph)
        onnx.checker.check_model(graph, full_check=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(graph, str(path))
        return path


def split_stack_features(matrix: np.ndarray, dims: ModelDims) -> dict[str, np.ndarray]:
    """The stacker's feature rows (training.gbm.stack_features) as the served model's named inputs."""
    inputs, start = {}, 0
    for tensor in served_models(dims)[LIGHTGBM].inputs:
        (width,) = tensor.shape
        inputs[tensor.name] = np.ascontiguousarray(matrix[:, start : start + width], dtype=np.float32)
        start += width
    return inputs


def exporters(dims: ModelDims) -> dict[str, OnnxExporter]:
    """The exporter of every served model that has a graph, by model name.

    The text encoder is the fine-tuned encoder with its price head (training.finetune.PriceRegressor);
    the OCR networks are PP-OCR's, as the rapidocr wheel ships them.
    """
    return {
        IMAGE_ENCODER: TorchExporter(IMAGE_ENCODER, dims, {"image_embedding": EMBEDDING}),
        TEXT_ENCODER: TorchExporter(TEXT_ENCODER, dims, {"text_embedding": EMBEDDING, "text_log_price": LOG_PRICE}),
        LEXICAL: TorchExporter(LEXICAL, dims, {"lexical_log_price": LOG_PRICE}),
        FUSION: TorchExporter(FUSION, dims, {"mlp_log_price": LOG_PRICE, "retrieval_vector": EMBEDDING}),
        LIGHTGBM: LightGbmExporter(dims),
        OCR_DETECTOR: PpOcrExporter(OCR_DETECTOR, dims),
        OCR_RECOGNIZER: PpOcrExporter(OCR_RECOGNIZER, dims),
    }


def float32_exact_thresholds(booster: lgb.Booster) -> lgb.Booster:
    """The same model with every split threshold moved to the largest float32 <= it.

    LightGBM compares `x <= threshold` with a float64 threshold; ONNX's TreeEnsemble stores
    float32 thresholds, and rounding to the nearest float32 can round up onto a feature value
    that sits between the two, sending that row down the other branch. For float32 inputs
    (LightGBM here is trained and served on float32 features) `x <= t` and `x <= down(t)`
    always agree, so the model's predictions are unchanged and the conversion becomes exact.
    """
    def round_down(match: re.Match) -> str:
        values = np.array(match.group(1).split(), dtype=np.float64)
        down = values.astype(np.float32)
        down = np.where(down.astype(np.float64) > values, np.nextafter(down, np.float32(-np.inf)), down)
        return "threshold=" + " ".join(repr(float(v)) for v in down.astype(np.float64))

    text = re.sub(r"^threshold=(.*)$", round_down, booster.model_to_string(), flags=re.M)
    # the header's byte sizes of each tree no longer hold; without them LightGBM parses in order
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.M)
    return lgb.Booster(model_str=text)


def onnx_opsets(path: Path) -> dict[str, int]:
    """The opset of each domain a saved graph imports."""
    model = onnx.load(str(path), load_external_data=False)
    return {(entry.domain or "ai.onnx"): int(entry.version) for entry in model.opset_import}

