"""Serving profiles: which graphs of a deployment are quantised, and the parity they must keep.

- `fp32`: every graph as exported, in float32, held to the exporters' tight bounds: the
  reference for parity, and what a GPU serves.
- `cpu-int8`: the text encoder (the cost of a text-only row on a CPU) quantised to INT8 after the
  fp32 export, with ONNX Runtime's dynamic quantisation: the Linear layers' weights stored as
  signed 7-bit (`reduce_range`) with one scale per output channel, their inputs quantised per
  batch at run time (DynamicQuantizeLinear + MatMulInteger). For any x86-64 CPU; its graph runs
  on CPU instances only.
- `cpu-int8-vnni`: the same with full 8-bit weights, for CPUs with VNNI (client.cpu), where
  they cannot overflow: closer to float32 and faster (measured on an AVX-512 VNNI CPU, 512
  held-out texts, the text encoder alone: 1.49x float32 instead of 1.28x; worst embedding cosine
  0.988 instead of 0.982).

`export-bundle --profile auto` (the default) picks fp32 where ONNX Runtime has CUDA, else
`cpu-int8-vnni` on a CPU with VNNI, else `cpu-int8` (:func:`choose_profile`); the manifest
records the choice and why.

How the INT8 text encoder is built, as measured on this project's x86-64 CPU (AVX2, no AVX-512
VNNI; README, "INT8 CPU profile"):
- One weight scale per output channel: the decisive choice (worst embedding cosine to float32 on
  512 test rows: 0.89 with one scale per tensor, 0.98 per channel).
- `reduce_range` (7-bit weights), as ONNX Runtime advises without VNNI, where u8 x s8 products
  are added in pairs into int16 and 8-bit weights can saturate: per channel, slightly better
  (0.976 -> 0.982). With VNNI, 8-bit weights are better still (`cpu-int8-vnni`).
- The feed-forward down-projections (`layer.N/output/dense`) stay float32: their inputs are the
  GELU outputs, whose outliers quantise worst (worst cosine 0.982 -> 0.988, worst price-head
  difference 0.15 -> 0.10 in log price, for a small part of the speed-up). The price head's
  Gemm is quantised with the rest (31 quantised matrix products in all).
- The image encoder stays float32: statically quantised (QDQ or QOperator, per channel, with or
  without reduce_range) it was slower on the AVX-512 VNNI CPU (633-697 ms instead of 414 ms for 32
  photos on 2 threads: its depthwise convolutions gain nothing from INT8). The fusion MLP is a few
  small matrix products per row: not worth an approximation.
- The feed-forward down-projections quantised too (every Linear layer, full range): 1.73x, but
  a worst embedding cosine of 0.973, at the edge of the parity bound: not taken.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from client.cpu import VNNI_FLAGS
from client.models import TEXT_ENCODER
from export.parity import MaxAbsDiff, MinCosine, Tolerance

# Linear layers whose inputs are GELU outputs in BERT-style encoders (torch.onnx's node names)
FP32_NODES = re.compile(r"layer\.\d+/output/dense/MatMul$")
INT8_EMBEDDING = MinCosine(0.97)
INT8_LOG_PRICE = MaxAbsDiff(0.25)


@dataclass(frozen=True)
class ServingProfile:
    """A way to build a deployment's graphs.

    Attributes:
        name: what `export-bundle --profile` takes and the manifest and model card record.
        summary: one line for the model card.
        quantized: the models quantised to INT8, each with the parity bounds its quantised
            graph must keep (one per output), instead of the exporter's float32 bounds.
        reduce_range: INT8 weights kept to 7 bits, for CPUs without VNNI.
        cpu_flags: the serving CPU needs one of these flags (empty: any CPU).
    """

    name: str
    summary: str
    quantized: Mapping[str, Mapping[str, Tolerance]] = field(default_factory=dict)
    reduce_range: bool = True
    cpu_flags: frozenset[str] = frozenset()

    def tolerances(self, model: str, exported: Mapping[str, Tolerance]) -> dict[str, Tolerance]:
        """The bounds `model`'s graph is checked against in this profile."""
        return dict(self.quantized.get(model, exported))

    def precision(self, model: str) -> str:
        """'int8' for the models this profile quantises, else 'fp32'."""
        return "int8" if model in self.quantized else "fp32"


INT8_TEXT_ENCODER = {TEXT_ENCODER: {"text_embedding": INT8_EMBEDDING, "text_log_price": INT8_LOG_PRICE}}
FP32 = ServingProfile("fp32", "every graph in float32")
CPU_INT8 = ServingProfile(
    "cpu-int8",
    "text encoder quantised to INT8 with 7-bit weights (ONNX Runtime dynamic quantisation, served on CPU "
    "instances, any x86-64 CPU); every other graph in float32",
    INT8_TEXT_ENCODER,
)
CPU_INT8_VNNI = ServingProfile(
    "cpu-int8-vnni",
    "text encoder quantised to INT8 with 8-bit weights (ONNX Runtime dynamic quantisation, served on CPU "
    "instances with VNNI); every other graph in float32",
    INT8_TEXT_ENCODER, reduce_range=False, cpu_flags=VNNI_FLAGS,
)
PROFILES = {profile.name: profile for profile in (FP32, CPU_INT8, CPU_INT8_VNNI)}
AUTO = "auto"
"""What `export-bundle --profile` takes to let :func:`choose_profile` pick."""


def choose_profile(cuda: bool, flags: frozenset[str]) -> tuple[ServingProfile, str]:
    """The profile a deployment built here gets by default, and why.

    Args:
        cuda: whether ONNX Runtime has CUDA here (the deployment is then meant for a GPU).
        flags: this CPU's flags (:func:`client.cpu.cpu_flags`).
    """
    if cuda:
        return FP32, "ONNX Runtime has CUDA here: float32, as a GPU serves it"
    vnni = sorted(VNNI_FLAGS & flags)
    if vnni:
        return CPU_INT8_VNNI, f"no CUDA; the CPU has VNNI ({', '.join(vnni)})"
    return CPU_INT8, "no CUDA; the CPU has no VNNI: 7-bit INT8 weights"


def quantize_int8(path: Path, reduce_range: bool = True) -> Path:
    """Replaces the float32 graph at `path` with its dynamically quantised INT8 version
    (7-bit weights with `reduce_range`).

    The graph is first pre-processed (ONNX Runtime's graph optimisations and shape inference), as
    the quantiser expects; the interface (tensor names, shapes, dtypes) is unchanged.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # symbolic shape inference cannot follow the exporter's Min(max positions, length) slice
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        kept = [node.name for node in graph.graph.node if node.op_type == "MatMul" and FP32_NODES.search(node.name)]
        quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, nodes_to_exclude=kept)
    return path


def quantize_graphs(profile: ServingProfile, paths: Mapping[str, Path]) -> None:
    """Quantises, in place, the graphs of the models `profile` quantises."""
    for model in profile.quantized:
        quantize_int8(paths[model], profile.reduce_range)
