"""Tests of client.ocr: real OCR on rendered labels and a real product photo, cache, batch runner."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from PIL import Image, ImageDraw, ImageFont

from client import ocr as ocr_module
from client.errors import MissingDependencyError
from client.images import ImageFetcher, load_images
from client.models import MAX_BATCH_SIZE, OCR_DETECTOR, OCR_RECOGNIZER
from client.ocr import (
    OCR_ENGINES,
    NoOcr,
    OcrCache,
    OcrEngine,
    PaddleOcrEngine,
    RapidOcrEngine,
    TesseractEngine,
    join_lines,
    make_ocr_engine,
    ocr_cache_key,
    run_ocr,
)
from client.ppocr import (
    ALPHABET_END,
    DETECTOR_CALIBRATION,
    DETECTOR_FILE,
    RECOGNIZER_CALIBRATION,
    RECOGNIZER_FILE,
    LocalOcrModels,
    PpOcrReader,
    ReaderSettings,
    graph_characters,
    ppocr_graphs,
    quantize_detector,
    quantize_recognizer,
    rapidocr_models_dir,
)
from scripts.calibrate_ocr import main as calibrate_main
from tests.conftest import PHOTOS as IMAGES

HAS_TESSERACT = importlib.util.find_spec("pytesseract") is not None and shutil.which("tesseract") is not None
HAS_PADDLE = importlib.util.find_spec("paddleocr") is not None


def label(*lines: str, color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Render printed text lines, black on white, as an RGB uint8 array.

    The canvas is square: RapidOCR's detector scales the short side up to 736 px, so a wide,
    short strip would cost several times more.
    """
    font = ImageFont.load_default(size=40)
    image = Image.new("RGB", (480, 480), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((30, 20 + 70 * i), line, fill=color, font=font)
    return np.asarray(image).copy()


@pytest.fixture(scope="module")
def rapid() -> RapidOcrEngine:
    return RapidOcrEngine()


@pytest.fixture(scope="module")
def graphs() -> dict:
    return ppocr_graphs()


@pytest.fixture(scope="module")
def served(graphs) -> LocalOcrModels:
    """The served OCR graphs, in ONNX Runtime sessions of this process."""
    return LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()})


@pytest.fixture(scope="module")
def fp32_graphs() -> dict:
    """The served graphs left in FP32."""
    return ppocr_graphs(int8=False)


def words(text: str) -> list[str]:
    return text.upper().split()


# -- engines ---------------------------------------------------------------------------------------


def test_rapidocr_reads_rendered_label_in_order(rapid: RapidOcrEngine) -> None:
    text = rapid.read(label("ORGANIC HONEY", "NET WT 12 OZ", "PACK OF 6"))
    assert words(text) == ["ORGANIC", "HONEY", "NET", "WT", "12", "OZ", "PACK", "OF", "6"]


def test_rapidocr_reads_real_product_photo(rapid: RapidOcrEngine) -> None:
    prepared = load_images(ImageFetcher(IMAGES), [str(IMAGES / "21CqJblUm8L.jpg")], ocr_max_side=1024)[0]
    assert prepared.ocr_pixels is not None
    text = rapid.read(prepared.ocr_pixels).upper()
    # The label says "Boar's Head Pepperhouse Gourmaise"; a character or two may be misread.
    label_text = "BOAR'S HEAD PEPPERHOUSE GOURMAISE"
    assert common_characters(label_text, text) >= 0.9 * len(label_text)


def test_rapidocr_blank_and_empty_images_read_nothing(rapid: RapidOcrEngine) -> None:
    assert rapid.read(np.full((200, 300, 3), 255, np.uint8)) == ""
    assert rapid.read(np.zeros((0, 10, 3), np.uint8)) == ""


def test_background_is_trimmed_before_detection_at_the_same_scale(graphs, served) -> None:
    """A label in the middle of a white photo: the detector reads the label's part alone, at the
    scale of the whole photo, and the lines and their boxes (in the photo's pixels) are what it
    reads without trimming; a photo of background alone calls no model."""
    photo = np.full((640, 640, 3), 255, np.uint8)
    photo[120:600, 80:560] = label("ORGANIC HONEY", "NET WT 12 OZ", "PACK OF 6")
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    characters = graph_characters(graphs[OCR_RECOGNIZER])
    detector_inputs: dict[bool, tuple[int, ...]] = {}
    lines = {}
    for trim in (False, True):
        def recording(model: str, inputs: dict[str, np.ndarray], trim: bool = trim) -> dict[str, np.ndarray]:
            if model == OCR_DETECTOR:
                detector_inputs[trim] = inputs["ocr_image"].shape
            return served(model, inputs)

        lines[trim] = PpOcrReader(recording, characters, ReaderSettings(trim_background=trim)).read_lines(bgr)
    assert detector_inputs[False] == (1, 3, 480, 480)
    _, _, height, width = detector_inputs[True]
    assert height < 480 and width < 480 and height % 32 == 0 and width % 32 == 0
    assert [text for text, _, _ in lines[True]] == [text for text, _, _ in lines[False]]
    assert len(lines[True]) == 3 and "ORGANIC HONEY" in {text for text, _, _ in lines[True]}
    for (_, _, trimmed), (_, _, whole) in zip(lines[True], lines[False], strict=True):
        np.testing.assert_allclose(trimmed, whole, atol=12)  # a quarter of a line; the offset is 64+ px
        assert trimmed[:, 1].min() > 120 and trimmed[:, 0].min() > 80  # in the photo's pixels

    def no_model(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError(f"{model} called on a background-only photo")

    assert PpOcrReader(no_model, characters).read_lines(np.full((640, 480, 3), 250, np.uint8)) == []


def test_rapidocr_gives_the_detector_bgr(monkeypatch: pytest.MonkeyPatch) -> None:
    """PP-OCR's networks were trained on OpenCV's BGR images: RGB input must be reversed."""
    seen: list[np.ndarray] = []

    def detector_only(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["ocr_image"])
        return {"text_probability": np.zeros((1, 1, *inputs["ocr_image"].shape[2:]), np.float32)}

    engine = RapidOcrEngine(run=detector_only, characters=["a"])
    rgb = np.zeros((64, 96, 3), np.uint8)
    rgb[..., 0] = 200  # red
    assert engine.read(rgb) == ""  # no text probability anywhere: no box, no recogniser call
    (detector_input,) = seen
    assert detector_input.shape == (1, 3, 320, 480)  # enlarged to the detector side, 480 px
    blue, red = detector_input[0, 0].mean(), detector_input[0, 2].mean()
    assert red > 0 > blue  # channel 2 carries the red: (200 / 255 - 0.5) / 0.5 vs (0 - 0.5) / 0.5


def test_served_graphs_compute_what_rapidocr_s_files_compute(fp32_graphs) -> None:
    """The detector is the wheel's graph renamed; the FP32 recogniser's ArgMax / ReduceMax outputs
    are the argmax / max of the wheel graph's per-character probabilities over the kept characters
    (renormalised: the softmax runs over those alone), on a real photo's lines."""
    import onnxruntime as ort

    prepared = load_images(ImageFetcher(IMAGES), [str(IMAGES / "21CqJblUm8L.jpg")], ocr_max_side=640)[0]
    bgr = np.ascontiguousarray(prepared.ocr_pixels[:, :, ::-1])
    served = LocalOcrModels({name: graph.SerializeToString() for name, graph in fp32_graphs.items()})
    calls: dict[str, tuple[dict, dict]] = {}

    def recording(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls[model] = (inputs, served(model, inputs))
        return calls[model][1]

    assert PpOcrReader(recording, graph_characters(fp32_graphs[OCR_RECOGNIZER])).read_lines(bgr)
    originals = {name: ort.InferenceSession(str(rapidocr_models_dir() / file))
                 for name, file in ((OCR_DETECTOR, DETECTOR_FILE), (OCR_RECOGNIZER, RECOGNIZER_FILE))}
    inputs, outputs = calls[OCR_DETECTOR]
    (probability,) = originals[OCR_DETECTOR].run(None, {"x": inputs["ocr_image"]})
    np.testing.assert_array_equal(outputs["text_probability"], probability)
    inputs, outputs = calls[OCR_RECOGNIZER]
    (per_character,) = originals[OCR_RECOGNIZER].run(None, {"x": inputs["text_lines"]})
    wheel_characters = graph_characters(onnx.load(str(rapidocr_models_dir() / RECOGNIZER_FILE)))
    kept = [0, *(1 + i for i, c in enumerate(wheel_characters) if ord(c) < ALPHABET_END), len(wheel_characters) + 1]
    assert graph_characters(fp32_graphs[OCR_RECOGNIZER]) == [wheel_characters[i - 1] for i in kept[1:-1]]
    per_kept_character = per_character[..., kept]
    np.testing.assert_array_equal(outputs["char_index"], per_kept_character.argmax(axis=2))
    np.testing.assert_allclose(outputs["char_probability"],
                               per_kept_character.max(axis=2) / per_kept_character.sum(axis=2), rtol=1e-4)


def test_recogniser_alphabet_is_the_characters_before_cjk(graphs) -> None:
    """Latin, accented letters, digits and the symbols of labels are kept; CJK ideographs, kana
    and hangul are dropped, and the output layer shrinks with them (blank and space stay)."""
    characters = graph_characters(graphs[OCR_RECOGNIZER])
    assert {"A", "z", "0", "%", "é", "®", "°", "™", "½", "★"} <= set(characters)
    assert not {"米", "あ", "한", "："} & set(characters)
    assert all(ord(c) < ALPHABET_END for c in characters) and 1_000 < len(characters) < 2_000
    output_layer = {init.name: init.dims[-1] for init in graphs[OCR_RECOGNIZER].graph.initializer
                    if init.dims and init.dims[-1] > 1_000}
    assert len(output_layer) == 2 and set(output_layer.values()) == {len(characters) + 2}  # weight and bias


def common_characters(reference: str, other: str) -> int:
    return sum(block.size for block in difflib.SequenceMatcher(None, reference, other, autojunk=False)
               .get_matching_blocks())


def quantised_nodes_cover_convolutions(graph: onnx.ModelProto, op_types: set[str]) -> int:
    """How many `op_types` nodes the graph has, after checking each reads dequantised input and weights."""
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.graph.node}
    dequantised = {node.output[0] for node in graph.graph.node if node.op_type == "DequantizeLinear"}
    convolutions = [node for node in graph.graph.node if node.op_type in op_types]
    assert all(set(node.input[:2]) <= dequantised for node in convolutions)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.graph.initializer)
    return len(convolutions)


def characters_read_alike(runs: dict[str, LocalOcrModels], characters: list[str]) -> float:
    """Of the characters the "fp32" run reads on real photos (not the calibration photos: every 7th
    from the first), the share the "int8" run reads too."""
    photos = sorted(IMAGES.glob("*.jpg"))[1::7][:16]
    views = [image.ocr_pixels for image in load_images(ImageFetcher(IMAGES), [str(p) for p in photos],
                                                       ocr_max_side=640) if image.ocr_pixels is not None]
    texts = {name: [join_lines(PpOcrReader(run, characters).read_lines(np.ascontiguousarray(v[:, :, ::-1])))
                    for v in views] for name, run in runs.items()}
    read_by_fp32 = sum(map(len, texts["fp32"]))
    assert read_by_fp32 > 300
    return sum(common_characters(a, b) for a, b in zip(texts["fp32"], texts["int8"], strict=True)) / read_by_fp32


def test_int8_recogniser_reads_what_the_fp32_one_reads(graphs, fp32_graphs) -> None:
    """The served recogniser is quantised (INT8 weights behind QDQ pairs) after ONNX Runtime's
    fusions, and every plain convolution of the fused graph is quantised (the committed calibration
    covers it); behind the FP32 detector, on real photos it reads at least 90% of the characters
    the FP32 recogniser reads (measured: 96.7% on these photos' first 80, 23 read identically)."""
    assert quantised_nodes_cover_convolutions(graphs[OCR_RECOGNIZER], {"Conv"}) > 30
    assert "Gelu" in {node.op_type for node in graphs[OCR_RECOGNIZER].graph.node}  # fused before quantisation
    runs = {"fp32": fp32_graphs, "int8": {**fp32_graphs, OCR_RECOGNIZER: graphs[OCR_RECOGNIZER]}}
    sessions = {name: LocalOcrModels({m: g.SerializeToString() for m, g in run.items()}) for name, run in runs.items()}
    assert characters_read_alike(sessions, graph_characters(graphs[OCR_RECOGNIZER])) >= 0.9


def test_int8_detector_reads_what_the_fp32_one_reads(graphs, fp32_graphs) -> None:
    """Every convolution of the served detector is quantised (the committed calibration covers it);
    with the served recogniser behind both, on real photos it finds boxes that read at least 90% of
    the characters the FP32 detector's boxes read (measured: 94.4% on 116 photos, 39 identical)."""
    assert quantised_nodes_cover_convolutions(graphs[OCR_DETECTOR], {"Conv", "ConvTranspose"}) > 50
    runs = {"fp32": {**graphs, OCR_DETECTOR: fp32_graphs[OCR_DETECTOR]}, "int8": graphs}
    sessions = {name: LocalOcrModels({m: g.SerializeToString() for m, g in run.items()}) for name, run in runs.items()}
    assert characters_read_alike(sessions, graph_characters(graphs[OCR_RECOGNIZER])) >= 0.9


def test_every_reader_setting_changes_the_cache_key() -> None:
    """Text read with other settings must never be reused from the OCR cache."""
    default = ReaderSettings()
    changed = {"detector_side": 640, "max_boxes": 16, "line_width_step": 16, "min_line_width": 64,
               "min_score": 0.6, "box_threshold": 0.6, "trim_background": False}
    assert set(changed) == {field.name for field in dataclasses.fields(ReaderSettings)}
    keys = {dataclasses.replace(default, **{name: value}).cache_key for name, value in changed.items()}
    assert len(keys) == len(changed) and default.cache_key not in keys


@pytest.mark.parametrize(("model", "quantize"), [(OCR_DETECTOR, quantize_detector), (OCR_RECOGNIZER, quantize_recognizer)])
def test_quantisation_is_reproducible_from_a_calibration(tmp_path: Path, fp32_graphs, model: str, quantize) -> None:
    """scripts/calibrate_ocr.py writes a calibration cache per network; quantising twice with it gives the same graph."""
    assert calibrate_main(["--images", str(IMAGES), "--photos", "3", "--output-dir", str(tmp_path)]) == 0
    calibration = tmp_path / {OCR_DETECTOR: DETECTOR_CALIBRATION, OCR_RECOGNIZER: RECOGNIZER_CALIBRATION}[model].name
    ranges = json.loads(calibration.read_text())["data"]
    assert len(ranges) > 50
    first, second = (quantize(fp32_graphs[model], calibration) for _ in range(2))
    assert first.SerializeToString() == second.SerializeToString()
    with pytest.raises(FileNotFoundError, match="calibrate_ocr.py"):
        quantize(fp32_graphs[model], tmp_path / "missing.json")


def test_images_read_together_read_as_alone(graphs) -> None:
    """read_many shares recogniser batches across images (fewer calls, capped at MAX_BATCH_SIZE
    lines) and gives each image exactly the lines, scores and boxes it gives alone."""
    calls: Counter = Counter()
    sessions = LocalOcrModels({name: graph.SerializeToString() for name, graph in graphs.items()})

    def counted(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls[model] += 1
        assert len(next(iter(inputs.values()))) <= MAX_BATCH_SIZE
        return sessions(model, inputs)

    photos = sorted(IMAGES.glob("*.jpg"))[2::7][:8]
    views = [np.ascontiguousarray(image.ocr_pixels[:, :, ::-1]) for image in
             load_images(ImageFetcher(IMAGES), [str(p) for p in photos], ocr_max_side=640) if image.ocr_pixels is not None]
    reader = PpOcrReader(counted, graph_characters(graphs[OCR_RECOGNIZER]))
    alone = [reader.read_lines(view) for view in views]
    calls_alone = calls.copy()
    calls.clear()
    together = reader.read_many(views)
    assert sum(map(len, alone)) > 20
    for lines, expected in zip(together, alone, strict=True):
        assert [(text, score) for text, score, _ in lines] == [(text, score) for text, score, _ in expected]
        assert all(np.array_equal(box, other) for (*_, box), (*_, other) in zip(lines, expected, strict=True))
    assert calls[OCR_DETECTOR] == len(views) and calls[OCR_RECOGNIZER] < calls_alone[OCR_RECOGNIZER]


def test_reads_at_most_max_boxes_the_largest(graphs, served) -> None:
    bgr = np.ascontiguousarray(label(*(f"LINE {'W' * i}" for i in range(1, 7)))[:, :, ::-1])
    characters = graph_characters(graphs[OCR_RECOGNIZER])
    every = PpOcrReader(served, characters, ReaderSettings(max_boxes=24)).read_lines(bgr)
    capped = PpOcrReader(served, characters, ReaderSettings(max_boxes=2)).read_lines(bgr)
    assert len(every) == 6 and len(capped) == 2
    areas = sorted((cv2.contourArea(box.astype(np.float32)) for _, _, box in every), reverse=True)
    assert sorted((cv2.contourArea(box.astype(np.float32)) for _, _, box in capped), reverse=True) == areas[:2]


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32)]
)
def test_engines_refuse_non_rgb_uint8(rapid: RapidOcrEngine, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        rapid.read(bad)
    with pytest.raises(ValueError, match="RGB uint8"):
        NoOcr().read(bad)


def test_join_lines_reading_order_and_min_score() -> None:
    def box(x: float, y: float, w: float = 40, h: float = 20) -> list[list[float]]:
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]

    lines = [
        ("third", 0.9, box(0, 100)),
        ("second", 0.9, box(60, 3)),  # same row as "first", slightly lower
        ("first", 0.9, box(0, 0)),
        ("noise", 0.2, box(0, 50)),
        ("  ", 0.99, box(0, 70)),
    ]
    assert join_lines(lines, min_score=0.5) == "first second third"
    assert join_lines(lines, min_score=0.1) == "first second noise third"


def test_make_ocr_engine_names() -> None:
    assert OCR_ENGINES == ("rapidocr", "paddleocr", "tesseract", "none")
    assert isinstance(make_ocr_engine("rapidocr"), RapidOcrEngine)
    none = make_ocr_engine("none")
    assert isinstance(none, NoOcr) and none.read(label("HELLO")) == ""
    with pytest.raises(ValueError) as error:
        make_ocr_engine("bogus")
    for name in OCR_ENGINES:
        assert name in str(error.value)


@pytest.mark.skipif(HAS_TESSERACT, reason="tesseract is installed here")
def test_tesseract_missing_names_the_installs() -> None:
    with pytest.raises(MissingDependencyError) as error:
        make_ocr_engine("tesseract")
    assert isinstance(error.value, ImportError)
    assert "pip install pytesseract" in str(error.value)
    assert "apt-get install tesseract-ocr" in str(error.value)


@pytest.mark.skipif(not HAS_TESSERACT, reason="pytesseract or the tesseract program is not installed")
def test_tesseract_reads_rendered_label() -> None:
    assert "HONEY" in words(TesseractEngine().read(label("ORGANIC HONEY")))


@pytest.mark.skipif(HAS_PADDLE, reason="paddleocr is installed here")
def test_paddleocr_missing_names_the_install() -> None:
    with pytest.raises(MissingDependencyError, match="pip install paddleocr paddlepaddle"):
        PaddleOcrEngine(det_model_dir="/nonexistent/det", rec_model_dir="/nonexistent/rec")


# -- cache -----------------------------------------------------------------------------------------


def test_ocr_cache_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ocr.jsonl"
    cache = OcrCache(path)
    assert cache.get("rapidocr", "aa") is None
    cache.put("rapidocr", "aa", "NET WT 12 oz – café")
    cache.put("tesseract", "aa", "other engine")
    reopened = OcrCache(path)
    assert reopened.get("rapidocr", "aa") == "NET WT 12 oz – café"
    assert reopened.get("tesseract", "aa") == "other engine"
    assert reopened.get("rapidocr", "bb") is None
    assert len(reopened) == 2


def test_ocr_cache_survives_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "ocr.jsonl"
    good = [json.dumps({"engine": "rapidocr", "sha256": sha, "text": sha.upper()}) for sha in ("aa", "bb")]
    path.write_text("\n".join(good) + '\n{"engine": "rapidocr", "sha256": "cc", "te')  # crash mid-write
    cache = OcrCache(path)
    assert len(cache) == 2 and cache.get("rapidocr", "bb") == "BB"
    assert cache.get("rapidocr", "cc") is None
    cache.put("rapidocr", "cc", "CC")  # appending after the torn line must not glue onto it
    reopened = OcrCache(path)
    assert len(reopened) == 3 and reopened.get("rapidocr", "cc") == "CC"
    assert all(json.loads(line) for line in path.read_text().splitlines())


# -- batch runner ----------------------------------------------------------------------------------


class CountingEngine(OcrEngine):
    """Reads an image's mean intensity as text, counting calls."""

    name = "rapidocr"
    calls = 0

    def read(self, image: np.ndarray) -> str:
        CountingEngine.calls += 1
        if image.shape[0] == 13:
            raise RuntimeError("engine failure on this image")
        return f"mean {image.mean():.0f}"


@pytest.fixture()
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[CountingEngine]]:
    CountingEngine.calls = 0
    monkeypatch.setattr(ocr_module, "make_ocr_engine", lambda name, **options: CountingEngine())
    ocr_module._engine_here.cache_clear()  # run_ocr keeps the engine it built per name
    yield CountingEngine
    ocr_module._engine_here.cache_clear()


def test_run_ocr_uses_and_fills_cache(counting: type[CountingEngine], tmp_path: Path) -> None:
    dark, light = np.full((8, 8, 3), 10, np.uint8), np.full((8, 8, 3), 200, np.uint8)
    images = [("sha-dark", dark), ("sha-light", light), ("sha-dark", dark)]
    path = tmp_path / "ocr.jsonl"
    first = run_ocr("rapidocr", images, OcrCache(path))
    assert first == {"sha-dark": "mean 10", "sha-light": "mean 200"}
    assert counting.calls == 2  # the repeated image is read once

    second = run_ocr("rapidocr", images, OcrCache(path))  # a fresh cache object, read from disk
    assert second == first
    assert counting.calls == 2  # nothing read again


def test_run_ocr_failure_reads_empty_and_is_not_cached(
    counting: type[CountingEngine], tmp_path: Path
) -> None:
    cache = OcrCache(tmp_path / "ocr.jsonl")
    texts = run_ocr(
        "rapidocr", [("bad", np.zeros((13, 8, 3), np.uint8)), ("ok", np.zeros((8, 8, 3), np.uint8))], cache
    )
    assert texts == {"bad": "", "ok": "mean 0"}
    key = ocr_cache_key("rapidocr")
    assert cache.get(key, "bad") is None and cache.get(key, "ok") == "mean 0"


def test_run_ocr_rejects_unknown_engine() -> None:
    with pytest.raises(ValueError, match="rapidocr"):
        run_ocr("bogus", [("a", np.zeros((8, 8, 3), np.uint8))], None)


def test_run_ocr_none_engine_reads_nothing(tmp_path: Path) -> None:
    cache = OcrCache(tmp_path / "ocr.jsonl")
    assert run_ocr("none", [("a", label("HELLO"))], cache) == {"a": ""}
    assert len(cache) == 0


def test_run_ocr_in_worker_processes(tmp_path: Path) -> None:
    images = [("one", label("GREEN TEA")), ("two", label("DARK ROAST COFFEE")), ("three", label("SEA SALT"))]
    cache = OcrCache(tmp_path / "ocr.jsonl")
    texts = run_ocr("rapidocr", images, cache, workers=2)
    assert {sha: words(text) for sha, text in texts.items()} == {
        "one": ["GREEN", "TEA"],
        "two": ["DARK", "ROAST", "COFFEE"],
        "three": ["SEA", "SALT"],
    }
    assert OcrCache(cache.path).get(ocr_cache_key("rapidocr"), "two") == texts["two"]


def test_stopped_worker_processes_skip_the_images_already_queued_for_them() -> None:
    """`stop` is set after four groups of one image are handed out, while the two worker processes
    still start (import, build their engine). Cancelling a future cannot reach the groups a
    process pool has sent down its call queue (up to workers + 1); the workers must skip them
    (they read them, before: three images after the stop)."""
    stop = threading.Event()

    def images() -> Iterator[tuple[str, np.ndarray]]:
        for n in range(12):
            if n == 4:
                stop.set()
            yield f"label-{n}", label(f"ITEM {n}")

    assert run_ocr("rapidocr", images(), None, workers=2, stop=stop, batch_images=1) == {}


def test_run_ocr_worker_surfaces_missing_dependency(tmp_path: Path) -> None:
    images = [("a", label("A")), ("b", label("B"))]
    if HAS_TESSERACT:
        pytest.skip("tesseract is installed here")
    with pytest.raises(MissingDependencyError, match="tesseract"):
        run_ocr("tesseract", images, None, workers=2)
