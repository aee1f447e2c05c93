"""PP-OCR text reading with its two networks served like the other models.

The detector and the recogniser are the ONNX graphs that the rapidocr wheel bundles (PP-OCRv6
small). Export copies them into the model repository, so a Triton server runs them (on its GPU
when it has one) and `client predict` without --url runs the same files in-process. The client
keeps the pre- and post-processing, taken from rapidocr's own modules: resize and normalise for
the detector, boxes from its probability map (DB post-processing), crops, resize for the
recogniser and CTC decoding. The recogniser's graph ends in ArgMax / ReduceMax over its 1,750
classes (characters, CTC's blank and a space), so each text line comes back as one index and one
probability per step, not as a probability per character.

The recogniser reads the characters before the CJK blocks (:data:`ALPHABET_END`: Latin, Greek,
Cyrillic, digits, punctuation and symbols; 1,748 of the wheel's 18,708): its output layer keeps
those columns alone, which is a tenth of its cost (the catalogue's text encoders are English).
Both networks are served in INT8 (static QDQ quantisation by ONNX Runtime's quantisation tools,
one weight scale per output channel, 7-bit weights): the recogniser's convolutions and matrix
products after ONNX Runtime's own graph fusions (GELU, layer norm), which quantisation would
otherwise break apart, and the detector's convolutions. Their activation ranges are calibrated
once on real product photos and committed beside this module (:data:`RECOGNIZER_CALIBRATION`,
:data:`DETECTOR_CALIBRATION`, written by ``scripts/calibrate_ocr.py``), so every export builds
the same graphs and training reads the text that serving reads. On an AVX-512 VNNI CPU the INT8
detector takes 40 ms where the FP32 one takes 143 ms (one thread, a 480 x 384 px input).

Cheaper than rapidocr's defaults, measured on real product photos (``benchmarks/ocr_cost.py``):
the detector reads the image at :data:`ReaderSettings.detector_side` px on its longest side
instead of enlarging its short side to 736 px; the angle classifier is left out; at most
:data:`ReaderSettings.max_boxes` boxes are read, the largest; text lines are padded to a
multiple of 32 px instead of to 320 px, and lines of one width are read in one batch.

This module does not import onnx; :func:`ppocr_graphs` (training and export) does.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from rapidocr.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode
from rapidocr.utils.process_img import get_rotate_crop_image

from client.errors import MissingDependencyError
from client.models import MAX_BATCH_SIZE, OCR_DETECTOR, OCR_RECOGNIZER, ModelRunner, run_each

DETECTOR_FILE = "PP-OCRv6_det_small.onnx"
RECOGNIZER_FILE = "PP-OCRv6_rec_small.onnx"
RECOGNIZER_CALIBRATION = Path(__file__).with_name("ppocr_recognizer_calibration.json")
DETECTOR_CALIBRATION = Path(__file__).with_name("ppocr_detector_calibration.json")
# Code points from here on (CJK radicals, kana, hangul, CJK ideographs, full-width forms) are
# dropped from the recogniser's alphabet.
ALPHABET_END = 0x2E80
# the served graphs, in the OCR cache key: text read by other graphs is not reused
SERVED_GRAPHS = f"ppocrv6-small/det-int8/rec-int8-fused/below-u{ALPHABET_END:x}"

_NORMALISE = 0.5  # PP-OCR's mean and std, every channel
_LINE_HEIGHT = 48
_DETECTOR_STRIDE = 32  # the detector's input sides are multiples of this
_BACKGROUND_TOLERANCE = 24  # a pixel within this of white in every channel is background
_BACKGROUND_MARGIN = 16  # px of background kept around what is not background


@dataclass(frozen=True)
class ReaderSettings:
    """What the text read from an image depends on, besides the two graphs.

    Attributes:
        detector_side: longest side of the detector's input, px (images are scaled to it, both
            sides then rounded to multiples of 32); smaller images are enlarged first, so the
            recogniser also reads their crops at this scale.
        max_boxes: text boxes read per image, at most: the largest.
        line_width_step: text lines are padded on the right to a multiple of this width, px
            (at the recogniser's 48 px height); lines of one width are read in one batch.
        min_line_width: narrower lines are padded to this width (rapidocr pads to 320 px).
        min_score: lines recognised with a lower mean confidence are dropped.
        box_threshold: detector boxes with a lower mean probability are dropped.
        trim_background: the detector reads only the part of the image that is not near-white
            background (plus a margin), at the scale it would read the whole image: catalogue
            photos on white spend about a quarter less on detection (measured: 72-78 instead of
            101-106 ms per photo on one thread); an image of background alone is not read.
    """

    detector_side: int = 480
    max_boxes: int = 24
    line_width_step: int = 32
    min_line_width: int = 32
    min_score: float = 0.5
    box_threshold: float = 0.5
    trim_background: bool = True

    @property
    def cache_key(self) -> str:
        """The OCR cache's engine key: texts read with other settings are not reused."""
        return (f"{SERVED_GRAPHS}/det{self.detector_side}/boxes{self.max_boxes}/lines{self.line_width_step}"
                f"-{self.min_line_width}/score{self.min_score:g}/box{self.box_threshold:g}"
                f"{'/trim' if self.trim_background else ''}")


class PpOcrReader:
    """Reads the text lines of an image with the served PP-OCR detector and recogniser.

    Args:
        run: runs a served model (in-process ONNX Runtime, or a Triton server).
        characters: the recogniser's alphabet (:func:`graph_characters`; a deployment ships it).
        settings: detector size, box cap and thresholds.
    """

    def __init__(self, run: ModelRunner, characters: list[str], settings: ReaderSettings = ReaderSettings()):
        self.run = run
        self.settings = settings
        self._boxes = DBPostProcess(thresh=0.3, box_thresh=settings.box_threshold, max_candidates=1000,
                                    unclip_ratio=1.6, score_mode="fast", use_dilation=True)
        self._decode = CTCLabelDecode(character=list(characters))

    def read_lines(self, bgr: np.ndarray) -> list[tuple[str, float, np.ndarray]]:
        """The recognised lines of a BGR uint8 image: (text, confidence, box [4, 2]) each,
        every box the detector found (up to ``max_boxes``, the largest), blank lines included.
        Boxes are in the pixels of the image as read: enlarged to ``detector_side`` when smaller."""
        return self.read_many([bgr])[0]

    def read_many(self, images: Sequence[np.ndarray]) -> list[list[tuple[str, float, np.ndarray]]]:
        """:meth:`read_lines` of each BGR image: one detector input per image, then the text
        lines of all of them read together, in batches of one padded width (at most
        :data:`client.models.MAX_BATCH_SIZE` lines). A runner that can (a server's) gets each
        network's requests of the group at once (:func:`client.models.run_each`). A line's
        recogniser input depends on that line alone, so each image reads as it would alone."""
        pages = [self._page(bgr) for bgr in images]
        detected = [page for page in pages if page.detector_input is not None]
        outputs = run_each(self.run, OCR_DETECTOR, [{"ocr_image": page.detector_input} for page in detected])
        for page, output in zip(detected, outputs, strict=True):
            page.boxes = self._text_boxes(page, output["text_probability"])
        crops = [get_rotate_crop_image(page.bgr, box.copy()) for page in pages for box in page.boxes]
        recognised = iter(self._recognise(crops))
        return [[(*next(recognised), box) for box in page.boxes] for page in pages]

    def _page(self, bgr: np.ndarray) -> _Page:
        """An image as the detector reads it: enlarged to ``detector_side`` when smaller, and the
        part of it that is not background, scaled and normalised (None: nothing to detect)."""
        side = self.settings.detector_side
        longest = max(bgr.shape[:2])
        if 0 < longest < side:  # small print in a small image needs the pixels
            scale = side / longest
            bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                             interpolation=cv2.INTER_CUBIC)
            longest = max(bgr.shape[:2])
        rows, columns = slice(None), slice(None)
        if self.settings.trim_background and longest > 0:
            content = _content_box(bgr, stride=_DETECTOR_STRIDE * longest / side)
            if content is None:
                return _Page(bgr)
            rows, columns = content
        region = bgr[rows, columns]
        # scaled as the whole image would be: its longest side to `side`
        resize = DetPreProcess(round(side * max(region.shape[:2]) / longest) if longest else side, "max",
                               [_NORMALISE] * 3, [_NORMALISE] * 3)
        # None: an image too small to be rounded to 32 px
        return _Page(bgr, resize(region), region.shape[:2], (columns.start or 0, rows.start or 0))

    def _text_boxes(self, page: _Page, probability: np.ndarray) -> np.ndarray:
        """The page's text boxes [n, 4, 2] from the detector's probability map, in the page's
        pixels: up to ``max_boxes``, the largest, in the detector's order."""
        boxes, _ = self._boxes(probability, page.region_shape)
        if len(boxes) == 0:
            return _NO_BOXES
        boxes = np.asarray(boxes, dtype=np.float32) + np.float32(page.region_origin)
        if len(boxes) > self.settings.max_boxes:
            largest = np.argsort(-_areas(boxes), kind="stable")[: self.settings.max_boxes]
            boxes = boxes[np.sort(largest)]
        return boxes

    def _recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, confidence) of each crop: resized to 48 px high, its width rounded up to a
        multiple of ``line_width_step`` (padded on the right); crops of the same width go to the
        recogniser together, in batches of at most MAX_BATCH_SIZE, so little of what it reads is
        padding."""
        step = self.settings.line_width_step
        widths = [max(1, math.ceil(_LINE_HEIGHT * crop.shape[1] / crop.shape[0])) for crop in crops]
        padded = [max(self.settings.min_line_width, math.ceil(width / step) * step) for width in widths]
        groups = []
        for batch_width in sorted(set(padded)):
            same_width = [i for i, width in enumerate(padded) if width == batch_width]
            groups += [same_width[start : start + MAX_BATCH_SIZE] for start in range(0, len(same_width), MAX_BATCH_SIZE)]
        feeds = []
        for members in groups:
            batch = np.zeros((len(members), 3, _LINE_HEIGHT, padded[members[0]]), dtype=np.float32)
            for slot, i in enumerate(members):
                resized = cv2.resize(crops[i], (widths[i], _LINE_HEIGHT)).transpose(2, 0, 1).astype(np.float32)
                batch[slot, :, :, : widths[i]] = (resized / 255 - _NORMALISE) / _NORMALISE
            feeds.append({"text_lines": batch})
        lines: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for members, outputs in zip(groups, run_each(self.run, OCR_RECOGNIZER, feeds), strict=True):
            decoded, _ = self._decode.decode(outputs["char_index"], outputs["char_probability"], remove_duplicate=True)
            for slot, i in enumerate(members):
                lines[i] = decoded[slot]
        return lines


_NO_BOXES = np.zeros((0, 4, 2), dtype=np.float32)


@dataclass
class _Page:
    """An image on its way through the detector (:meth:`PpOcrReader._page`)."""

    bgr: np.ndarray  # as read: enlarged to the detector's side when smaller
    detector_input: np.ndarray | None = None  # [1, 3, h, w] float32; None: nothing to detect
    region_shape: tuple[int, int] = (0, 0)  # (height, width) of the part of `bgr` the detector reads
    region_origin: tuple[int, int] = (0, 0)  # (x, y) of that part in `bgr`
    boxes: np.ndarray = field(default_factory=lambda: _NO_BOXES)


def _content_box(bgr: np.ndarray, stride: float) -> tuple[slice, slice] | None:
    """(rows, columns) of the part of an image that is not near-white background, widened by a
    margin and to the detector's grid (``stride`` px of the image per detector stride), so that the
    detector reads it as it reads the whole image, without stretching it to a multiple of its stride;
    None for background alone."""
    foreground = (bgr < 255 - _BACKGROUND_TOLERANCE).any(axis=2)
    rows, columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if len(rows) == 0:
        return None
    return tuple(_widened(int(found[0]), int(found[-1]) + 1, size, stride)
                 for found, size in ((rows, bgr.shape[0]), (columns, bgr.shape[1])))


def _widened(start: int, stop: int, size: int, stride: float) -> slice:
    """[start, stop) with a margin, on the detector's grid: from a multiple of ``stride`` px, a
    multiple of ``stride`` px long, cut at the image's edges."""
    first = math.floor(max(0, start - _BACKGROUND_MARGIN) / stride)
    last = math.ceil((stop + _BACKGROUND_MARGIN) / stride)
    return slice(round(first * stride), min(size, round(last * stride)))


def _areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of quadrilaterals ``[n, 4, 2]`` (shoelace formula)."""
    x, y = boxes[..., 0].astype(np.float64), boxes[..., 1].astype(np.float64)
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def rapidocr_models_dir() -> Path:
    """The folder of the ONNX models inside the installed rapidocr wheel."""
    import rapidocr

    return Path(rapidocr.__file__).parent / "models"


def ppocr_graphs(models_dir: Path | None = None, *, int8: bool = True) -> dict:
    """The two served graphs, built from rapidocr's bundled files: ``{model name: onnx.ModelProto}``.

    The detector is renamed to the served tensor names (``ocr_image`` -> ``text_probability``);
    the recogniser (``text_lines``) keeps the characters below :data:`ALPHABET_END` and gets
    ArgMax and ReduceMax over its character axis (``char_index``, ``char_probability``) in place
    of its per-character probabilities. Both are then quantised to INT8 with the committed
    calibrations (:func:`quantize_detector`, :func:`quantize_recognizer`).

    Args:
        models_dir: the folder of rapidocr's ONNX files; None: the installed wheel's.
        int8: False leaves both graphs in FP32 (to calibrate them, or compare).

    Raises:
        MissingDependencyError: onnx is not installed, or the wheel lacks the model files.
    """
    onnx, _ = _import_onnx()
    built = _build_graphs(models_dir or rapidocr_models_dir(), int8)
    return {name: onnx.load_from_string(graph) for name, graph in built.items()}


@functools.cache
def _build_graphs(models_dir: Path, int8: bool) -> dict[str, bytes]:
    """:func:`ppocr_graphs`, serialised, built once per process (quantisation takes seconds)."""
    onnx, helper = _import_onnx()
    paths = {OCR_DETECTOR: models_dir / DETECTOR_FILE, OCR_RECOGNIZER: models_dir / RECOGNIZER_FILE}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise MissingDependencyError(f"rapidocr's models are missing ({', '.join(missing)}): "
                                     "pip install --force-reinstall 'rapidocr>=3.10,<4'")
    detector = onnx.load(str(paths[OCR_DETECTOR]))
    _rename(detector.graph, {"x": "ocr_image", "fetch_name_0": "text_probability"})
    recognizer = onnx.load(str(paths[OCR_RECOGNIZER]))
    _rename(recognizer.graph, {"x": "text_lines"})
    _restrict_alphabet(recognizer, ALPHABET_END)
    (scores,) = recognizer.graph.output
    steps = helper.make_tensor_value_info("char_index", onnx.TensorProto.INT64, ["batch", "steps"])
    probability = helper.make_tensor_value_info("char_probability", onnx.TensorProto.FLOAT, ["batch", "steps"])
    recognizer.graph.node.extend([
        helper.make_node("ArgMax", [scores.name], ["char_index"], axis=2, keepdims=0),
        helper.make_node("ReduceMax", [scores.name], ["char_probability"], axes=[2], keepdims=0),
    ])
    del recognizer.graph.output[:]
    recognizer.graph.output.extend([steps, probability])
    if int8:
        detector, recognizer = quantize_detector(detector), quantize_recognizer(recognizer)
    for graph in (detector, recognizer):
        onnx.checker.check_model(graph)
    return {OCR_DETECTOR: detector.SerializeToString(), OCR_RECOGNIZER: recognizer.SerializeToString()}


def _restrict_alphabet(recognizer, end: int) -> None:
    """Keeps the recogniser's characters whose code points are all below ``end``, in place: the
    columns of its output layer (weight ``[hidden, classes]`` and bias ``[classes]``) for those
    characters, CTC's blank (first) and the space rapidocr appends (last), and the alphabet in
    the graph's metadata. The softmax then runs over the kept characters alone."""
    from onnx import numpy_helper

    characters = graph_characters(recognizer)
    classes = len(characters) + 2
    kept = [0, *(1 + i for i, text in enumerate(characters) if all(ord(c) < end for c in text)), classes - 1]
    layer = [init for init in recognizer.graph.initializer if init.dims and init.dims[-1] == classes]
    if sorted(len(init.dims) for init in layer) != [1, 2]:
        raise ValueError(f"expected the recogniser's output layer (a weight and a bias of {classes} classes), "
                         f"found {[init.name for init in layer]}")
    for init in layer:
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(init)[..., kept]),
                                              init.name))
    for entry in recognizer.metadata_props:
        if entry.key == "character":
            entry.value = "\n".join(characters[i - 1] for i in kept[1:-1])


# It writes an op into the ONNX domain that ONNX does not define (the others write standard ops,
# at opset 17, or ops of ONNX Runtime's com.microsoft domain).
_NOT_ONNX_FUSIONS = ["SimplifiedLayerNormFusion"]


def _fused(recognizer):
    """The graph after ONNX Runtime's extended optimisations (GELU, layer norm, convolution with
    activation and matrix product fusions), saved as ONNX Runtime writes it: quantised first, these
    patterns would be split by QDQ pairs and run op by op (measured: a fifth of the INT8
    recogniser's time). Convolutions fused with their activation stay FP32."""
    import onnxruntime as ort

    onnx, _ = _import_onnx()
    with tempfile.TemporaryDirectory(prefix="ppocr-fused-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(folder) / "fused.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(recognizer.SerializeToString(), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=_NOT_ONNX_FUSIONS)
        return onnx.load(options.optimized_model_filepath)


def quantize_recognizer(recognizer, calibration: Path = RECOGNIZER_CALIBRATION,
                        calibration_inputs: Iterable[dict[str, np.ndarray]] | None = None):
    """The recogniser with INT8 convolutions and matrix products, after ONNX Runtime's graph
    fusions (:func:`_fused`); see :func:`_quantize_static` for the calibration.

    Args:
        recognizer: the FP32 recogniser, as :func:`ppocr_graphs` builds it with ``int8=False``.
        calibration: the calibration cache file.
        calibration_inputs: recogniser inputs (``{"text_lines": [n, 3, 48, width]}``) to calibrate on.

    Raises:
        FileNotFoundError: no calibration file and no inputs to calibrate on.
    """
    return _quantize_static(recognizer, calibration, calibration_inputs, ["Conv", "MatMul"], fuse=True,
                            ranges={"CalibMovingAverage": True})


def quantize_detector(detector, calibration: Path = DETECTOR_CALIBRATION,
                      calibration_inputs: Iterable[dict[str, np.ndarray]] | None = None):
    """The detector with INT8 convolutions; see :func:`_quantize_static` for the calibration.

    It is not fused first: ONNX Runtime fuses most of its convolutions with their activations,
    and fused convolutions would stay FP32 (measured: the quantised graph as it is takes 40 ms
    where the FP32 one takes 143 ms, on one thread of an AVX-512 VNNI CPU).

    Args:
        detector: the FP32 detector, as :func:`ppocr_graphs` builds it with ``int8=False``.
        calibration: the calibration cache file.
        calibration_inputs: detector inputs (``{"ocr_image": [1, 3, height, width]}``) to calibrate on.

    Raises:
        FileNotFoundError: no calibration file and no inputs to calibrate on.
    """
    # global min/max, merged every 8 photos: a detector's activations for many photos fill memory
    return _quantize_static(detector, calibration, calibration_inputs, ["Conv", "ConvTranspose"], fuse=False,
                            ranges={"CalibMaxIntermediateOutputs": 8})


def _quantize_static(graph, calibration: Path, calibration_inputs: Iterable[dict[str, np.ndarray]] | None,
                     op_types: list[str], fuse: bool, ranges: dict[str, object]):
    """``graph`` with INT8 ``op_types`` (static QDQ, per-channel weights), at opset 17.

    Activation ranges come from ``calibration``, ONNX Runtime's calibration cache (min/max per
    tensor, computed with the calibrator's options ``ranges``). With ``calibration_inputs`` and no
    file at ``calibration``, ONNX Runtime first runs the FP32 graph on those inputs and writes
    the file. Weights are 7-bit (``reduce_range``): CPUs without VNNI add u8 x s8 products in
    pairs into int16, where 8-bit weights can overflow.

    Raises:
        FileNotFoundError: no calibration file and no inputs to calibrate on.
    """
    onnx, _ = _import_onnx()
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Inputs(CalibrationDataReader):
        def __init__(self, inputs: Iterable[dict[str, np.ndarray]]):
            self.inputs = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.inputs, None)

    if calibration_inputs is None and not calibration.is_file():
        raise FileNotFoundError(f"no OCR calibration at {calibration}: run scripts/calibrate_ocr.py")
    with tempfile.TemporaryDirectory(prefix="ppocr-int8-") as folder:
        fp32, prepared, int8 = (str(Path(folder) / name) for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        converted = version_converter.convert_version(graph, 17)  # per-channel QDQ, LayerNormalization: 17
        onnx.save(_fused(converted) if fuse else converted, fp32)
        quant_pre_process(fp32, prepared, skip_optimization=fuse, skip_symbolic_shape=True)
        quantize_static(prepared, int8, Inputs(calibration_inputs or []), calibration_cache_path=calibration,
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=op_types, calibrate_method=CalibrationMethod.MinMax,
                        extra_options=ranges)
        return onnx.load(int8)


def _import_onnx():
    try:
        import onnx
        from onnx import helper
    except ImportError as error:
        raise MissingDependencyError("building the OCR graphs needs onnx: pip install onnx") from error
    return onnx, helper


def _rename(graph, names: dict[str, str]) -> None:
    """Renames graph inputs and outputs, and every node's use of them."""
    for value in (*graph.input, *graph.output):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]


def graph_characters(recognizer) -> list[str]:
    """The recogniser's alphabet from its ONNX metadata (as rapidocr reads it)."""
    metadata = {entry.key: entry.value for entry in recognizer.metadata_props}
    return metadata["character"].splitlines()


class LocalOcrModels:
    """The two OCR graphs in ONNX Runtime sessions of this process (a :data:`ModelRunner`).

    Args:
        graphs: serialised ONNX models (bytes) or files, by served model name.
        threads: ONNX Runtime intra-op threads; 0 uses every core.
    """

    def __init__(self, graphs: dict[str, bytes | Path], threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.sessions = {name: ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                                    providers=["CPUExecutionProvider"])
                         for name, graph in graphs.items()}

    def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[model]
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))
