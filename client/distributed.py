"""`client predict --ray`: the same client on a Ray cluster, one Predictor per Ray Data actor.

The driver (the process that runs the command) reads and checks the input, the deployment and
the output paths as `client predict` does, before any work, and cuts the rows into numbered
blocks of `block_rows` rows in input order. A block whose part file (`OUT.csv.parts/
block-N.json`) is complete and was made from the same input, deployment and block size is done;
Ray Data's `map_batches` hands the others, one block per call, to a fixed pool of actors. Each
actor loads the deployment once (from the same path on its node) and predicts a block exactly
as one client process predicts its rows (`client.predict.predict_rows`: the same row path, link
policy, image bounds and OCR cache), with in-process ONNX Runtime or the given Triton servers.
The driver writes each returned block's part file atomically; at the end it writes the outputs
in input order from the parts and removes them.

A lost worker costs its block: Ray Data restarts the actor and retries the block (its defaults,
max_restarts=-1 and max_task_retries=-1). A killed driver costs the blocks in flight: the same
command again predicts only the blocks without a part file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from client.bundle import Deployment
from client.errors import BundleError, InputError, MissingDependencyError, PredictionInterrupted, WorkerError
from client.files import atomic_write
from client.inference import TritonBackend
from client.predict import (
    PredictConfig,
    RunStats,
    check_inputs,
    fingerprint,
    open_predictor,
    predict_rows,
    summarize,
    write_outputs,
)
from client.ray_cluster import LOOPBACK_NODE, NO_USAGE_STATS, RAY_INSTALL, LocalRayCluster, is_loopback
from client.table import CatalogTable

if TYPE_CHECKING:
    import pyarrow

logger = logging.getLogger(__name__)

PARTS_SUFFIX = ".parts"
LOCAL = "local"
"""`--ray local`: a private cluster on this machine for the run (client.ray_cluster)."""


@dataclass
class RayOptions:
    """Where and how wide a distributed run goes.

    Attributes:
        address: "auto" (the cluster `ray start` started on this machine, or RAY_ADDRESS),
            "HOST:PORT" of a cluster's head, or "local" (a private loopback cluster for the run).
        workers: actors, each holding one Predictor.
        worker_cpus: CPUs Ray reserves per actor; also its ONNX Runtime threads per model.
        block_rows: rows per block: the unit of work, of retry and of resumption.
    """

    address: str = "auto"
    workers: int = 2
    worker_cpus: int = 1
    block_rows: int = 1024

    def __post_init__(self) -> None:
        for name in ("workers", "worker_cpus", "block_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


def parts_folder(output_csv: Path) -> Path:
    """The folder of finished blocks beside the output: `OUT.csv.parts`."""
    return output_csv.with_name(output_csv.name + PARTS_SUFFIX)


class BlockParts:
    """Finished blocks, one JSON file each (fingerprint, block number, records), in a folder.

    A part file is written atomically once its whole block is predicted, so a part on disk is
    a whole block; one that names another fingerprint, block or rows is predicted again.

    Args:
        folder: the parts folder (created by the first write).
        fingerprint: of the input, the deployment and the block size.
        restart: ignore the parts already there.
    """

    def __init__(self, folder: Path, fingerprint: str, restart: bool):
        self.folder = folder
        self.fingerprint = fingerprint
        self.restart = restart

    def path(self, block: int) -> Path:
        return self.folder / f"block-{block:06d}.json"

    def finished(self, blocks: list[list[str]]) -> dict[int, list[dict]]:
        """The records of each finished block, by block number; `blocks` holds each block's sample_ids."""
        if self.restart or not self.folder.is_dir():
            return {}
        finished, foreign = {}, 0
        for number, sample_ids in enumerate(blocks):
            try:
                part = json.loads(self.path(number).read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as error:
                logger.warning("%s is unreadable (%s): predicting its block again", self.path(number), error)
                continue
            records = part.get("records", [])
            if (part.get("fingerprint") == self.fingerprint and part.get("block") == number
                    and [r.get("sample_id") for r in records] == sample_ids):
                finished[number] = records
            else:
                foreign += 1
        if foreign:
            logger.warning("%d part(s) in %s belong to another input, deployment or block size: "
                           "predicting their blocks again", foreign, self.folder)
        return finished

    def write(self, block: int, records: list[dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path(block), encoding="utf-8") as handle:
            json.dump({"fingerprint": self.fingerprint, "block": block, "records": records}, handle)

    def remove(self) -> None:
        """Deletes the part files (and temporary files a killed run left), then the folder if empty."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith(("block-", ".block-")):
                path.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            logger.warning("%s holds files of its own: left in place", self.folder)


def _deployment_digest(deployment: Deployment) -> str:
    """SHA-256 of the deployment's manifest of files: the same on every node that holds a copy."""
    return hashlib.sha256(json.dumps(deployment.manifest["files"], sort_keys=True).encode()).hexdigest()


class BlockPredictor:
    """A Ray Data actor: one Predictor for the deployment, loaded once, that predicts whole blocks.

    Args:
        config: the run's configuration, its paths absolute (the same on every node).
        deployment_digest: the driver's `_deployment_digest`, which this node's copy must match.
        threads: ONNX Runtime intra-op threads per model (in-process backend).

    Raises:
        BundleError: the deployment at `config.deployment` on this node is another one, or fails
            its checksums, or a server serves other models.
    """

    def __init__(self, config: PredictConfig, deployment_digest: str, threads: int):
        self.config = config
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        # one loop for the actor's life: the Triton backend's gRPC channels belong to it
        self.loop = asyncio.new_event_loop()
        self.predictor = self.loop.run_until_complete(self._open(deployment_digest, threads))

    async def _open(self, deployment_digest: str, threads: int):
        deployment = Deployment.load(self.config.deployment)
        if _deployment_digest(deployment) != deployment_digest:
            raise BundleError(f"{self.worker}: {self.config.deployment} holds another deployment than the driver's: "
                              "give every node the same export at the same path")
        return await open_predictor(self.config, deployment, threads)

    def __call__(self, batch: pyarrow.Table) -> dict[str, list]:
        """Predicts each block of `batch` (one row per block: its number and its rows' columns)."""
        results: dict[str, list] = {"block": [], "records": [], "stats": [], "worker": []}
        for block in batch.to_pylist():
            records, stats = self._predict(CatalogTable(
                sample_ids=block["sample_id"], texts=block["catalog_content"], image_links=block["image_link"],
                row_numbers=block["row_number"]))
            results["block"].append(block["block"])
            results["records"].append(json.dumps(records))
            results["stats"].append(stats.to_json())
            results["worker"].append(self.worker)
        return results

    def _predict(self, table: CatalogTable) -> tuple[list[dict], RunStats]:
        """The records of every row of `table`, in its order, and what they cost."""
        records: dict[str, dict] = {}
        stats = RunStats()
        requests_before = Counter(self.predictor.backend.requests_per_server())
        self.loop.run_until_complete(predict_rows(
            self.predictor, table, np.arange(len(table)),
            lambda finished: records.update((r["sample_id"], r) for r in finished), self.config, stats))
        stats.requests_per_server = Counter(self.predictor.backend.requests_per_server()) - requests_before
        return [records[sample_id] for sample_id in table.sample_ids], stats


def _import_ray(address: str) -> ModuleType:
    """`ray`, imported so that a driver on loopback stays there and sends no usage statistics.

    Raises:
        MissingDependencyError: Ray is not installed.
    """
    for name, value in (NO_USAGE_STATS | (LOOPBACK_NODE if is_loopback(address) else {})).items():
        os.environ.setdefault(name, value)  # read when ray is imported
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise MissingDependencyError(f"client predict --ray needs Ray: {RAY_INSTALL}") from error
    return ray


@contextmanager
def _connected(options: RayOptions) -> Iterator[ModuleType]:
    """`ray`, connected to the options' cluster (started for the run with `--ray local`)."""
    with ExitStack() as stack:
        address = options.address
        if address == LOCAL:
            address = stack.enter_context(LocalRayCluster(num_cpus=options.workers * options.worker_cpus)).address
        ray = _import_ray(address)
        ray.init(address=address, logging_level=logging.WARNING)
        stack.callback(ray.shutdown)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < options.workers * options.worker_cpus:
            logger.warning("the cluster has %g CPUs; %d workers of %d CPUs wait for nodes to join",
                           cpus, options.workers, options.worker_cpus)
        yield ray


async def _check_servers(config: PredictConfig, deployment: Deployment) -> None:
    """Checks that every server answers and serves the deployment's models.

    Raises:
        BundleError: a server serves other model files.
        InferenceError: a server stayed unavailable past the retries.
    """
    backend = TritonBackend(config.urls, retries=config.retries)
    try:
        await backend.verify(deployment)
    finally:
        await backend.close()


def _cause(error: Exception) -> str:
    """What failed in a worker: the exception it raised, else the last line of Ray's report."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, Exception):
        return f"{type(cause).__name__}: {cause}"
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


def _absolute(config: PredictConfig) -> PredictConfig:
    """The config with absolute paths (workers start elsewhere) and no progress bar of its own."""
    return replace(config, input_csv=config.input_csv.resolve(), deployment=config.deployment.resolve(),
                   cache_dir=config.cache_dir.expanduser().resolve(),
                   images_dir=config.images_dir.resolve() if config.images_dir else None, progress=False)


def predict_on_ray(config: PredictConfig, options: RayOptions) -> dict:
    """Runs a whole prediction on a Ray cluster; returns the summary (also written to `summary_json`).

    Raises:
        InputError: the input is unusable or an output path is refused (before any work).
        BundleError: the deployment fails its checksums, or a server serves other models.
        InferenceError: a server stayed unavailable past the retries (checked before any work).
        WorkerError: a worker could not start (e.g. another deployment on its node) or failed a
            block; the finished blocks are kept, a rerun continues.
        MissingDependencyError: Ray is not installed.
        PredictionInterrupted: Ctrl-C; finished blocks are kept.
    """
    started = time.perf_counter()
    table, deployment = check_inputs(config)
    folder = parts_folder(config.output_csv)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} (the finished blocks of --output) is not a folder: move it away")
    parts = BlockParts(folder, fingerprint(config.input_csv, deployment, options.block_rows), config.restart)
    blocks = [range(start, min(start + options.block_rows, len(table))) for start in range(0, len(table), options.block_rows)]
    finished = parts.finished([table.sample_ids[rows.start:rows.stop] for rows in blocks])
    pending = [number for number in range(len(blocks)) if number not in finished]
    resumed_blocks = len(finished)
    if config.urls and pending:  # before any work, as without --ray
        asyncio.run(_check_servers(config, deployment))
    stats, blocks_per_worker = RunStats(), Counter()
    if pending:
        with _connected(options) as ray:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = config.progress
            context.raise_original_map_exception = True  # the worker's own error, for _cause
            items = [{"block": number,
                      **{column: [values[i] for i in blocks[number]] for column, values in (
                          ("sample_id", table.sample_ids), ("catalog_content", table.texts),
                          ("image_link", table.image_links), ("row_number", table.row_numbers))}}
                     for number in pending]
            results = ray.data.from_items(items).map_batches(
                BlockPredictor, batch_size=1, batch_format="pyarrow",
                fn_constructor_kwargs={"config": _absolute(config), "deployment_digest": _deployment_digest(deployment),
                                       "threads": options.worker_cpus},
                compute=ray.data.ActorPoolStrategy(size=options.workers), num_cpus=options.worker_cpus,
            )
            try:
                for result in results.iter_rows():
                    records = json.loads(result["records"])
                    parts.write(result["block"], records)
                    finished[result["block"]] = records
                    stats.add(RunStats.from_json(result["stats"]))
                    blocks_per_worker[result["worker"]] += 1
            except KeyboardInterrupt:
                rows = sum(len(records) for records in finished.values())
                raise PredictionInterrupted(rows, folder) from None
            except ray.exceptions.RayError as error:
                raise WorkerError(f"{_cause(error)} (the finished blocks are kept in {folder}: run the same "
                                  "command again to continue)") from error

    records = [record for number in range(len(blocks)) for record in finished[number]]
    write_outputs(config, records)
    backend = f"Triton gRPC at {', '.join(config.urls)}" if config.urls else "in-process ONNX Runtime"
    summary = summarize(
        config, records, sum(len(blocks[number]) for number in pending), stats,
        f"Ray cluster {options.address}: {options.workers} worker(s) of {options.worker_cpus} CPU(s), {backend}",
        time.perf_counter() - started,
        blocks={"total": len(blocks), "resumed": resumed_blocks, "predicted_now": len(pending),
                "rows_per_block": options.block_rows},
        blocks_per_worker=dict(blocks_per_worker),
    )
    parts.remove()  # last: every output is written
    return summary
