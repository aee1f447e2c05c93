"""GPU check: the served graphs on a GPU against the CPU, and their throughput, in one JSON.

    python -m export.gpu_check [--deployment DIR | --run DIR] [-o gpu_check.json] [--dry-run]

1. A deployment: `--deployment`, or the export of `--run`, or the bundled sample trained and
   exported (written under `--workdir`). Export writes the GPU configs (KIND_GPU) as always.
2. Real rows of the bundled sample are prepared on CPU (images, OCR through the served PP-OCR
   graphs, tokens, catalogue features) and both ensembles run on ONNX Runtime's CPU provider;
   every model's inputs and outputs are recorded: they are the reference.
3. Parity: each GPU profile runs the recorded inputs of each model; every output is compared with
   the CPU's (max |diff|, and min cosine for embeddings) under that profile's bounds. Profiles:
   ONNX Runtime's CUDA provider; TensorRT FP16 (image encoder, text encoder, fusion: what the
   GPU configs accelerate, the lexical model aside) where ONNX Runtime has TensorRT; and, where
   ONNX Runtime has no CUDA provider but torch sees CUDA, the training run's PyTorch source
   models on CUDA (LightGBM and OCR stay on the CPU then).
4. Throughput: rows/s of both ensembles at batch 1, 32 and 64, each at several concurrencies,
   for every profile, and through the real Triton server (nvidia-pytriton's tritonserver, its
   GPU instances on ONNX Runtime's CUDA provider) where it can start here.

Whatever cannot run here (no CUDA provider, no TensorRT, no tritonserver, no training run for
the PyTorch models, the time budget spent) is written to the JSON with the reason, never left
out. `--dry-run` runs every step on the CPU, the CPU provider standing in for the GPU, with
small sizes: the same JSON, its GPU entries marked as not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from client.bundle import Deployment
from client.errors import MissingDependencyError, ServerStartError
from client.images import ImageFetcher
from client.inference import InProcessBackend
from client.models import (
    ENSEMBLE,
    FUSION,
    IMAGE_ENCODER,
    LEXICAL,
    MAX_BATCH_SIZE,
    TEXT_ENCODER,
    TEXT_ONLY_ENSEMBLE,
)
from client.ocr import NoOcr, OcrCache, OcrEngine, RapidOcrEngine
from client.rows import prepare_rows
from client.table import read_catalog_csv
from export.parity import FractionWithin, MaxAbsDiff, MinCosine, ParityResult, Tolerance, compare

logger = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parents[1] / "sample"
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_MODELS = (IMAGE_ENCODER, TEXT_ENCODER, FUSION)
TORCH_MODELS = (IMAGE_ENCODER, TEXT_ENCODER, LEXICAL, FUSION)
EMBEDDINGS = ("image_embedding", "text_embedding", "retrieval_vector")
PROBABILITIES = ("text_probability", "char_probability")


@dataclass(frozen=True)
class Bounds:
    """How close a profile's outputs must stay to the CPU's.

    Attributes:
        min_cosine: embeddings, every row.
        log_price: |difference| of log prices (0.01 is 1% of the price).
        probability: |difference| of the OCR networks' probabilities.
        same_lines: fraction of text lines whose recognised characters are all the CPU's.
    """

    min_cosine: float
    log_price: float
    probability: float
    same_lines: float

    def tolerance(self, output: str) -> Tolerance:
        if output in EMBEDDINGS:
            return MinCosine(self.min_cosine)
        if output in PROBABILITIES:
            return MaxAbsDiff(self.probability)
        if output == "char_index":
            return FractionWithin(self.same_lines, atol=0.0)
        return MaxAbsDiff(self.log_price)


# FP32 on a GPU: other kernels and summation orders (and TF32 where ONNX Runtime allows it)
FP32_BOUNDS = Bounds(min_cosine=0.9999, log_price=1e-3, probability=1e-3, same_lines=0.99)
FP16_BOUNDS = Bounds(min_cosine=0.999, log_price=2e-2, probability=2e-2, same_lines=0.9)


@dataclass(frozen=True)
class Sizes:
    """How much the check does: rows, batch sizes, concurrencies, seconds per throughput figure."""

    rows: int
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]
    seconds: float
    repeats: int


GPU_SIZES = Sizes(rows=64, batch_sizes=(1, 32, 64), concurrency=(1, 4, 16), seconds=2.0, repeats=3)
DRY_RUN_SIZES = Sizes(rows=12, batch_sizes=(1, 4), concurrency=(1, 2), seconds=0.3, repeats=1)


class Budget:
    """A deadline for the whole check, so that it ends in time whatever the machine."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def spent(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Profile:
    """One way of running the models that is checked against the CPU reference.

    Attributes:
        name: its key in the JSON.
        backend: runs models and ensembles (`run(model, inputs)`), safe to call from several threads.
        bounds: the parity bounds its outputs must meet.
        models: the composing models it runs itself (the others are not compared).
        stands_in_for: in a dry run, the GPU profile this CPU profile takes the place of.
    """

    name: str
    backend: InProcessBackend
    bounds: Bounds
    models: tuple[str, ...]
    stands_in_for: str | None = None


@dataclass
class Reference:
    """The CPU's inputs and outputs of every composing model, and both ensembles' inputs."""

    records: dict[str, list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]
    ensemble_inputs: dict[str, dict[str, np.ndarray]]
    ensemble_outputs: dict[str, dict[str, np.ndarray]]
    ocr: str


class RecordingBackend(InProcessBackend):
    """ONNX Runtime on CPU that keeps every composing model's inputs and outputs."""

    def __init__(self, deployment: Deployment):
        super().__init__(deployment, providers=lambda _: [CPU])
        self.records: dict[str, list] = defaultdict(list)

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = super().run(model, inputs)
        if not self.specs[model].is_ensemble:
            self.records[model].append((inputs, outputs))
        return outputs


class TorchBackend(InProcessBackend):
    """The training run's PyTorch source models on `device` for the models they were exported
    from; the other models (LightGBM, OCR) with ONNX Runtime on CPU."""

    def __init__(self, deployment: Deployment, run_dir: Path, device: str):
        import torch

        from export.pipeline import load_run

        super().__init__(deployment, providers=lambda _: [CPU])
        self.torch = torch
        self.device = torch.device(device)
        sources = load_run(run_dir).models
        self.modules = {name: sources[name].to(self.device).eval() for name in TORCH_MODELS}

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model not in self.modules:
            return super().run(model, inputs)
        spec = self.specs[model]
        with self.torch.inference_mode():
            outputs = self.modules[model](*(self.torch.from_numpy(inputs[t.name]).to(self.device) for t in spec.inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {t.name: out.float().cpu().numpy().reshape(len(out), *t.shape) for t, out in zip(spec.outputs, outputs)}


def environment() -> dict:
    """Versions, ONNX Runtime's providers and what torch sees of CUDA."""
    info = {"python": platform.python_version(), "machine": platform.machine(), "numpy": np.__version__,
            "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers()}
    try:
        import torch
    except ImportError:
        return {**info, "torch": None, "torch_cuda": False}
    cuda = torch.cuda.is_available()
    return {**info, "torch": torch.__version__, "torch_cuda": cuda, "torch_cuda_version": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None}


def build_deployment(args: argparse.Namespace) -> Path:
    """The deployment to check: given, or exported from the given run, or from the bundled sample."""
    if args.deployment:
        return args.deployment
    from export.cli import main as export_main

    run = args.run
    if run is None:
        from training.cli import main as train_main

        run = args.workdir / "run"
        logger.info("training the bundled sample into %s", run)
        if train_main([str(SAMPLE / "train.csv"), "-o", str(run), "--images", str(SAMPLE / "images")]) != 0:
            raise SystemExit("gpu_check: training the bundled sample failed (see above)")
    deployment = args.workdir / "deployment"
    if export_main([str(run), "-o", str(deployment)]) != 0:
        raise SystemExit(f"gpu_check: exporting {run} failed (see above)")
    return deployment


def record_reference(deployment: Deployment, rows: int, cache_dir: Path) -> Reference:
    """Prepares `rows` real rows of the bundled sample (those with a photo first) and runs both
    ensembles on CPU, recording every composing model's inputs and outputs."""
    cpu = RecordingBackend(deployment)
    table = read_catalog_csv(SAMPLE / "train.csv")
    photos = {path.name for path in (SAMPLE / "images").iterdir()}
    order = sorted(range(len(table)), key=lambda i: Path(table.image_links[i]).name not in photos)[:rows]
    ocr = ocr_engine(deployment, cpu)
    prepared = prepare_rows(table, order, ImageFetcher(SAMPLE / "images"), ocr_engine=ocr,
                            ocr_cache=OcrCache(cache_dir / "ocr.jsonl"), image_size=deployment.settings.image_size,
                            tokenizer=deployment.tokenizer())
    input_ids, attention_mask = deployment.tokenizer().pad(prepared.token_ids)
    has_image = prepared.has_image.astype(bool)
    common = {"input_ids": input_ids, "attention_mask": attention_mask,
              "numeric_features": prepared.numeric_features,
              "price_priors": deployment.price_priors().features([table.texts[i] for i in order])}
    text_only = {**common, "has_image": np.zeros((len(order), 1), np.float32),
                 "image_embedding": np.zeros((len(order), deployment.settings.image_dim), np.float32)}
    ensemble_inputs = {TEXT_ONLY_ENSEMBLE: text_only}
    if has_image.any():
        pixels = np.stack([image.pixels for image in prepared.images if image.has_image])
        with_photo = {name: array[has_image] for name, array in common.items()}
        ensemble_inputs[ENSEMBLE] = {**with_photo, "image": pixels,
                                     "has_image": np.ones((len(pixels), 1), np.float32)}
    ensemble_outputs = {ensemble: cpu.run(ensemble, inputs) for ensemble, inputs in ensemble_inputs.items()}
    return Reference(dict(cpu.records), ensemble_inputs, ensemble_outputs, ocr.name)


def ocr_engine(deployment: Deployment, backend: InProcessBackend) -> OcrEngine:
    """The deployment's served PP-OCR run by `backend`, or no OCR when the deployment reads none."""
    if deployment.settings.ocr_engine != RapidOcrEngine.name:
        return NoOcr()
    return RapidOcrEngine(run=backend.model_runner(), characters=deployment.ocr_characters())


def tensorrt_options(reference: Reference, cache_dir: Path) -> dict[str, dict]:
    """ONNX Runtime's TensorRT options per accelerated model: FP16, an engine cache, and one
    shape profile (batch 1 to MAX_BATCH_SIZE at the reference's text length), so that no batch
    size rebuilds an engine while it is timed."""
    options = {}
    for model in (m for m in TENSORRT_MODELS if m in reference.records):
        feed = reference.records[model][0][0]

        def shapes(batch: int, feed=feed) -> str:
            return ",".join(f"{name}:{'x'.join(map(str, (batch, *array.shape[1:])))}" for name, array in feed.items())

        options[model] = {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                          "trt_engine_cache_path": str(cache_dir / "tensorrt"),
                          "trt_profile_min_shapes": shapes(1), "trt_profile_opt_shapes": shapes(32),
                          "trt_profile_max_shapes": shapes(MAX_BATCH_SIZE)}
    return options


def make_profiles(deployment: Deployment, reference: Reference, run_dir: Path | None, dry_run: bool,
                  cache_dir: Path) -> tuple[list[Profile], dict[str, str]]:
    """The profiles that can run here, and why each of the others cannot."""
    available = ort.get_available_providers()
    recorded = tuple(reference.records)
    profiles, not_run = [], {}
    if dry_run:
        cpu = InProcessBackend(deployment, providers=lambda _: [CPU])
        profiles.append(Profile("cpu-as-onnxruntime-cuda", cpu, FP32_BOUNDS, recorded, "onnxruntime-cuda"))
        not_run["onnxruntime-cuda"] = "dry run: ONNX Runtime's CPU provider stood in (cpu-as-onnxruntime-cuda)"
        not_run["onnxruntime-tensorrt-fp16"] = "dry run"
    elif CUDA in available:
        cuda = InProcessBackend(deployment, providers=lambda _: [CUDA, CPU])
        profiles.append(Profile("onnxruntime-cuda", cuda, FP32_BOUNDS, recorded))
        if TENSORRT in available:
            options = tensorrt_options(reference, cache_dir)
            trt = InProcessBackend(deployment, providers=lambda m: [(TENSORRT, options[m]), CUDA, CPU]
                                   if m in options else [CUDA, CPU])
            missing = [m for m in options if TENSORRT not in trt.sessions[m].get_providers()]
            if missing:  # ONNX Runtime falls back to CUDA when TensorRT's libraries do not load
                not_run["onnxruntime-tensorrt-fp16"] = (f"TensorRT did not load for {', '.join(missing)} (see ONNX "
                                                        "Runtime's log above); pip install tensorrt")
            else:
                profiles.append(Profile("onnxruntime-tensorrt-fp16", trt, FP16_BOUNDS, tuple(options)))
        else:
            not_run["onnxruntime-tensorrt-fp16"] = f"this ONNX Runtime has no {TENSORRT} (providers: {available})"
    else:
        not_run["onnxruntime-cuda"] = (f"this ONNX Runtime ({ort.__version__}) has no {CUDA} (providers: "
                                       f"{available}): pip uninstall onnxruntime && pip install onnxruntime-gpu")
        not_run["onnxruntime-tensorrt-fp16"] = not_run["onnxruntime-cuda"]

    torch_cuda = environment()["torch_cuda"]
    if not dry_run and (CUDA in available or not torch_cuda):
        not_run["torch-cuda"] = ("ONNX Runtime has CUDA: the exported graphs themselves were checked" if torch_cuda
                                 or CUDA in available else "neither ONNX Runtime nor torch sees CUDA here")
    elif run_dir is None or not run_dir.is_dir():
        not_run["torch-cuda"] = f"the training run ({run_dir}) is not here: pass --training-run RUN_DIR"
    else:
        try:
            backend = TorchBackend(deployment, run_dir, "cpu" if dry_run else "cuda")
        except (ImportError, OSError, MissingDependencyError) as error:  # the train extra, the encoders' weights
            not_run["torch-cuda"] = f"the training run's models did not load: {type(error).__name__}: {error}"
            return profiles, not_run
        if dry_run:
            profiles.append(Profile("torch-cpu-as-torch-cuda", backend, FP32_BOUNDS, TORCH_MODELS, "torch-cuda"))
            not_run["torch-cuda"] = "dry run: torch on CPU stood in (torch-cpu-as-torch-cuda)"
        else:
            profiles.append(Profile("torch-cuda", backend, FP32_BOUNDS, TORCH_MODELS))
    return profiles, not_run


def check_parity(profile: Profile, reference: Reference) -> list[ParityResult]:
    """Every output of every model the profile runs, on the CPU's recorded inputs, against the
    CPU's outputs. Models called several times (OCR: one call per image or text-line width)
    get one result over all their calls."""
    results = []
    for model in profile.models:
        parts: dict[str, list[ParityResult]] = defaultdict(list)
        for inputs, expected in reference.records.get(model, []):
            outputs = profile.backend.run(model, inputs)
            for name, cpu_output in expected.items():
                parts[name].append(compare(model, name, cpu_output, {len(cpu_output): outputs[name]},
                                           profile.bounds.tolerance(name)))
        results += [merge_results(calls, profile.bounds.tolerance(name)) for name, calls in parts.items()]
    return results


def merge_results(calls: list[ParityResult], tolerance: Tolerance) -> ParityResult:
    """One result for several calls of a model: the worst metric (for a fraction of rows, the
    fraction over all rows), the largest |difference|, rows counted over all calls."""
    if len(calls) == 1:
        return calls[0]
    rows = sum(call.rows for call in calls)
    if isinstance(tolerance, FractionWithin):
        value = sum(call.value * call.rows for call in calls) / rows
        passed = value >= tolerance.bound
    else:
        value = tolerance.worst([call.value for call in calls])
        passed = all(call.passed for call in calls)
    offsets = np.cumsum([0] + [call.rows for call in calls])
    worst = max(range(len(calls)), key=lambda i: calls[i].max_abs_diff)
    return ParityResult(model=calls[0].model, output=calls[0].output, rows=rows, metric=tolerance.metric,
                        value=value, bound=tolerance.bound, worst_row=int(offsets[worst] + calls[worst].worst_row),
                        max_abs_diff=calls[worst].max_abs_diff, passed=passed)


def parity_entry(results: list[ParityResult], **extra) -> dict:
    return {"status": "run", **extra, "passed": all(r.passed for r in results), "results": [r.as_dict() for r in results]}


Infer = Callable[[str, dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
Point = Callable[[str, list[dict[str, np.ndarray]], int, float], Awaitable[float]]


def request_batches(inputs: dict[str, np.ndarray], batch: int) -> list[dict[str, np.ndarray]]:
    """Requests of exactly `batch` rows, cycling over the rows of `inputs`: one shape per batch
    size, so no request is the first of its shape (CUDA kernel choice, TensorRT engines)."""
    rows = len(inputs["input_ids"])
    return [{name: array[(start + np.arange(batch)) % rows] for name, array in inputs.items()}
            for start in range(0, rows, batch)]


async def rows_per_second(infer: Infer, ensemble: str, requests: list[dict[str, np.ndarray]], concurrency: int,
                          seconds: float) -> float:
    """Rows/s of `concurrency` callers sending requests back to back for `seconds`, after a warm-up
    request; requests in flight at the deadline are waited for and counted."""
    await infer(ensemble, requests[0])
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def caller(first: int) -> None:
        nonlocal done
        position = first
        while time.perf_counter() < deadline:
            inputs = requests[position % len(requests)]
            await infer(ensemble, inputs)
            done += len(inputs["input_ids"])
            position += concurrency

    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return done / (time.perf_counter() - started)


def in_process_point(backend: InProcessBackend) -> Point:
    """Throughput of `backend.run` called from `concurrency` threads."""
    async def point(ensemble: str, requests: list, concurrency: int, seconds: float) -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="gpu-check") as pool:
            return await rows_per_second(lambda m, x: loop.run_in_executor(pool, backend.run, m, x), ensemble,
                                         requests, concurrency, seconds)
    return point


def triton_point(url: str) -> Point:
    """Throughput of `concurrency` requests in flight to a Triton server over gRPC."""
    async def point(ensemble: str, requests: list, concurrency: int, seconds: float) -> float:
        from client.inference import TritonBackend

        backend = TritonBackend([url], retries=0)
        try:
            return await rows_per_second(backend.infer, ensemble, requests, concurrency, seconds)
        finally:
            await backend.close()
    return point


def measure_throughput(point: Point, reference: Reference, sizes: Sizes, budget: Budget) -> list[dict]:
    """Rows/s (median of `sizes.repeats` runs) of each ensemble at each batch size and concurrency;
    a figure the time budget leaves no room for is marked as skipped."""
    figures = []
    for ensemble, inputs in reference.ensemble_inputs.items():
        for batch in sizes.batch_sizes:
            requests = request_batches(inputs, batch)
            for concurrency in sizes.concurrency:
                figure = {"ensemble": ensemble, "batch": batch, "concurrency": concurrency}
                if budget.left() < 2 * sizes.seconds * sizes.repeats:
                    figures.append({**figure, "rows_per_s": None, "skipped": "time budget spent"})
                    continue
                runs = [asyncio.run(point(ensemble, requests, concurrency, sizes.seconds)) for _ in range(sizes.repeats)]
                figures.append({**figure, "rows_per_s": statistics.median(runs), "runs": runs})
                logger.info("%s batch %d concurrency %d: %.1f rows/s", ensemble, batch, concurrency, figures[-1]["rows_per_s"])
    return figures


def check_triton(deployment: Deployment, reference: Reference, sizes: Sizes, budget: Budget, dry_run: bool) -> dict:
    """The real tritonserver of the nvidia-pytriton wheel: both ensembles' outputs against the CPU
    reference, then throughput. Its GPU instances run on ONNX Runtime's CUDA provider when this
    ONNX Runtime has one; otherwise they are served on CPU and the entry says so."""
    on_gpu = not dry_run and CUDA in ort.get_available_providers()
    try:
        from client.serve import LocalTritonServer

        server = LocalTritonServer(deployment.repository, cpu_only=not on_gpu,
                                   ready_timeout_s=max(10.0, min(120.0, budget.left() / 4))).start()
    except (ImportError, MissingDependencyError, ServerStartError) as error:
        return {"status": "not run", "reason": f"{type(error).__name__}: {error}"}
    entry = {"status": "run", "instances": "GPU (ONNX Runtime CUDA)" if on_gpu else "CPU",
             "note": "dry run: served on CPU" if dry_run else None}
    try:
        point = triton_point(server.url)
        results = []
        for ensemble, inputs in reference.ensemble_inputs.items():
            outputs = asyncio.run(triton_outputs(server.url, ensemble, inputs))
            results += [compare(ensemble, name, expected, {len(expected): outputs[name]}, FP32_BOUNDS.tolerance(name))
                        for name, expected in reference.ensemble_outputs[ensemble].items()]
        entry["parity"] = parity_entry(results)
        entry["throughput"] = {"status": "run", "figures": measure_throughput(point, reference, sizes, budget)}
    finally:
        server.stop()
    return entry


async def triton_outputs(url: str, ensemble: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from client.inference import TritonBackend

    backend = TritonBackend([url], retries=0)
    try:
        return await backend.infer(ensemble, inputs)
    finally:
        await backend.close()


def summary(report: dict) -> str:
    """A few lines for the terminal: each parity entry's verdict and worst figure, each throughput's best."""
    lines = [f"GPU check{' (dry run)' if report['dry_run'] else ''}: {report['environment'].get('gpu') or 'no GPU'}"]
    entries = {**report["parity"], "triton": report["triton"].get("parity", report["triton"])}
    for name, entry in entries.items():
        if entry.get("status") != "run":
            lines.append(f"  parity {name}: not run ({entry['reason']})")
            continue
        failed = [r for r in entry["results"] if not r["passed"]]
        if not entry["results"]:
            lines.append(f"  parity {name}: none of its models ran on these rows")
            continue
        worst = max(entry["results"], key=lambda r: r["max_abs_diff"])
        lines.append(f"  parity {name}: {'ok' if not failed else f'{len(failed)} FAILED'}, largest |diff| "
                     f"{worst['max_abs_diff']:.3g} ({worst['model']}.{worst['output']})")
    throughputs = {**report["throughput"], "triton": report["triton"].get("throughput", {})}
    for name, entry in throughputs.items():
        measured = [f for f in entry.get("figures", []) if f["rows_per_s"]]
        for ensemble in sorted({f["ensemble"] for f in measured}):
            best = max((f for f in measured if f["ensemble"] == ensemble), key=lambda f: f["rows_per_s"])
            lines.append(f"  throughput {name} {ensemble}: best {best['rows_per_s']:.1f} rows/s "
                         f"(batch {best['batch']}, concurrency {best['concurrency']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.gpu_check", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--deployment", type=Path, help="a deployment folder (written by export-bundle) to check")
    source.add_argument("--run", type=Path, help="a training run to export and check (default: train the bundled "
                                                  "sample)")
    parser.add_argument("--training-run", type=Path,
                        help="with --deployment: its training run, for the PyTorch models on CUDA (default: the "
                             "run named in its manifest)")
    parser.add_argument("--workdir", type=Path, default=Path("build/gpu-check"),
                        help="where the sample's run and deployment are written (default: build/gpu-check)")
    parser.add_argument("-o", "--output", type=Path, help="the JSON to write (default: WORKDIR/gpu_check.json)")
    parser.add_argument("--rows", type=int, help="real rows of the bundled sample (default: 64; dry run: 12)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for the whole check after the deployment is ready; figures that do not fit "
                             "are marked as skipped (default: 420)")
    parser.add_argument("--no-triton", action="store_true", help="do not start the Triton server")
    parser.add_argument("--dry-run", action="store_true",
                        help="every step on CPU, the CPU standing in for the GPU, small sizes")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each figure as it is measured")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
    if args.rows:
        sizes = Sizes(args.rows, sizes.batch_sizes, sizes.concurrency, sizes.seconds, sizes.repeats)
    output = args.output or args.workdir / "gpu_check.json"
    report: dict = {"dry_run": args.dry_run, "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "argv": sys.argv[1:] if argv is None else list(argv), "environment": environment()}
    deployment = Deployment.load(build_deployment(args))
    budget = Budget(args.budget_s)
    run_dir = args.run or args.training_run or Path(deployment.manifest.get("training_run", ""))
    report["deployment"] = str(deployment.root)
    report["sizes"] = {"rows": sizes.rows, "batch_sizes": sizes.batch_sizes, "concurrency": sizes.concurrency,
                       "seconds_per_run": sizes.seconds, "repeats": sizes.repeats}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        reference = record_reference(deployment, sizes.rows, Path(scratch))
        report["rows"] = {ensemble: len(inputs["input_ids"]) for ensemble, inputs in reference.ensemble_inputs.items()}
        report["ocr"] = reference.ocr
        profiles, not_run = make_profiles(deployment, reference, run_dir, args.dry_run, Path(scratch))
        report["parity"] = {name: {"status": "not run", "reason": reason} for name, reason in not_run.items()}
        report["throughput"] = dict(report["parity"])
        for profile in profiles:
            report["parity"][profile.name] = parity_entry(check_parity(profile, reference),
                                                          stands_in_for=profile.stands_in_for)
            report["throughput"][profile.name] = {
                "status": "run", "stands_in_for": profile.stands_in_for,
                "figures": measure_throughput(in_process_point(profile.backend), reference, sizes, budget)}
        report["triton"] = ({"status": "not run", "reason": "--no-triton"} if args.no_triton
                            else check_triton(deployment, reference, sizes, budget, args.dry_run))
    checked = [entry for entry in (*report["parity"].values(), report["triton"].get("parity", {}))
               if entry.get("status") == "run"]
    report["parity_passed"] = all(entry["passed"] for entry in checked)
    report["seconds"] = round(budget.spent(), 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=float))
    print(summary(report))
    print(f"wrote {output}")
    return 0 if report["parity_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
