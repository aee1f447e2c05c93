"""`client predict --ray`: the same client on a real local Ray cluster (loopback only, no
dashboard, 2 CPUs), two Ray Data actors, the real exported deployment, in-process ONNX Runtime
and a real Triton server. Every run goes through the command line, in a process of its own, as a
user runs it (so a test can kill the driver)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client.blend import COMPONENTS
from client.distributed import BlockParts, parts_folder
from client.predict import PredictConfig, predict
from client.ray_cluster import LocalRayCluster
from tests.conftest import PROJECT, SAMPLE

ROWS = 96  # 18 of them with a photo in sample/images
BLOCK_ROWS = 8
BLOCKS = ROWS // BLOCK_ROWS
ACTOR = "MapBatches(BlockPredictor)"  # in the command line Ray gives each actor's process
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def ray_cluster():
    with LocalRayCluster(num_cpus=2, object_store_mb=300) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory) -> Path:
    """The first 96 rows of the sample's training rows, without prices; a link whose photo is not
    in sample/images is blanked, so that no run tries the network."""
    path = tmp_path_factory.mktemp("ray-inputs") / "rows.csv"
    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:ROWS]
    for row in rows:
        if not (SAMPLE / "images" / row["image_link"].rsplit("/", 1)[-1]).is_file():
            row["image_link"] = ""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sample_id", "catalog_content", "image_link"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def single_process(tmp_path_factory, deployment: Path, rows_csv: Path, urls: list[str]) -> list[dict[str, str]]:
    """The details CSV of the single-process `client predict` on the rows, with empty caches."""
    work = tmp_path_factory.mktemp("single")
    predict(PredictConfig(input_csv=rows_csv, output_csv=work / "out.csv", deployment=deployment, urls=urls,
                          images_dir=SAMPLE / "images", cache_dir=work / "cache", details_csv=work / "details.csv",
                          progress=False))
    return read_rows(work / "details.csv")


@pytest.fixture(scope="module")
def in_process_reference(tmp_path_factory, deployment, rows_csv) -> list[dict[str, str]]:
    return single_process(tmp_path_factory, deployment, rows_csv, [])


def ray_command(input_path: Path, output: Path, deployment: Path, cluster: LocalRayCluster, *options: str) -> list[str]:
    return [sys.executable, "-m", "client", "predict", str(input_path), "-o", str(output), "-d", str(deployment),
            "--images", str(SAMPLE / "images"), "--cache-dir", str(output.parent / "cache"),
            "--details", str(output.with_suffix(".details.csv")), "--summary", str(output.with_suffix(".json")),
            "--ray", cluster.address, "--workers", "2", "--block-rows", str(BLOCK_ROWS), "-q", *options]


def run_on_ray(input_path: Path, output: Path, deployment: Path, cluster: LocalRayCluster, *options: str) -> dict:
    """Runs `client predict --ray` to the end; returns its summary."""
    result = subprocess.run(ray_command(input_path, output, deployment, cluster, *options), capture_output=True,
                            text=True, cwd=PROJECT, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.with_suffix(".json").read_text())


ESTIMATE_COLUMNS = ("price", *COMPONENTS)


def assert_same_rows(output: Path, reference: list[dict[str, str]]) -> None:
    """Every input row once, in input order, with the single process's image status, OCR length
    and warnings, and its price and components as written (4 decimals) give or take one unit of
    the last: Ray's blocks batch rows differently, and a float sum of another batch shape may
    differ in its last bit, which moves a value lying on a rounding boundary by one unit."""
    details = read_rows(output.with_suffix(".details.csv"))
    assert [r["sample_id"] for r in details] == [r["sample_id"] for r in reference]
    assert [{k: v for k, v in r.items() if k not in ESTIMATE_COLUMNS} for r in details] == \
        [{k: v for k, v in r.items() if k not in ESTIMATE_COLUMNS} for r in reference]
    for column in ESTIMATE_COLUMNS:
        written = np.array([float(r[column]) for r in details])
        np.testing.assert_allclose(written, [float(r[column]) for r in reference], rtol=0, atol=1.01e-4,
                                   err_msg=column)
    assert [r["sample_id"] for r in read_rows(output)] == [r["sample_id"] for r in reference]
    assert not parts_folder(output).exists()


def test_only_parts_of_the_same_run_and_rows_count_as_finished(tmp_path):
    folder = tmp_path / "out.csv.parts"
    parts = BlockParts(folder, "fingerprint", restart=False)
    parts.write(0, [{"sample_id": "a"}, {"sample_id": "b"}])
    parts.write(1, [{"sample_id": "c"}])
    (folder / ".block-000002.json.x1y2.tmp").write_text("{")  # what a killed write leaves
    assert set(parts.finished([["a", "b"], ["c"], ["d"]])) == {0, 1}
    assert set(parts.finished([["a", "b"], ["e"]])) == {0}  # block 1 now holds other rows
    assert BlockParts(folder, "another input", restart=False).finished([["a", "b"], ["c"]]) == {}
    assert BlockParts(folder, "fingerprint", restart=True).finished([["a", "b"], ["c"]]) == {}
    parts.remove()
    assert not folder.exists()


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses ("hex IP:hex port", as /proc/net writes them) of the TCP sockets that
    the processes `pids` listen on."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1])
    return addresses


def test_the_cluster_listens_on_loopback_only(ray_cluster):
    addresses = listening_addresses({pid for pid, _ in ray_cluster.processes()})
    assert addresses, "found no listening socket of the cluster"
    loopback = ("0100007F:", "0000000000000000FFFF00000100007F:")  # 127.0.0.1, as IPv4 and as IPv6-mapped
    assert all(address.startswith(loopback) for address in addresses), addresses


def test_two_in_process_workers_give_the_single_process_prices(tmp_path, deployment, rows_csv, ray_cluster,
                                                               in_process_reference):
    summary = run_on_ray(rows_csv, tmp_path / "out.csv", deployment, ray_cluster)
    assert_same_rows(tmp_path / "out.csv", in_process_reference)
    assert summary["rows"] == summary["predicted_now"] == ROWS
    assert summary["blocks"] == {"total": BLOCKS, "resumed": 0, "predicted_now": BLOCKS, "rows_per_block": BLOCK_ROWS}
    assert sum(summary["blocks_per_worker"].values()) == BLOCKS
    photos = sum(1 for r in in_process_reference if r["image_status"] == "ok")
    assert summary["images"]["ok"] == photos > 10
    assert summary["rows_with_ocr_text"] > 10  # the workers read the photos themselves: their caches were empty


def test_workers_through_triton_give_the_single_process_triton_prices(tmp_path, tmp_path_factory, deployment,
                                                                      rows_csv, ray_cluster, triton_server):
    reference = single_process(tmp_path_factory, deployment, rows_csv, [triton_server.url])
    summary = run_on_ray(rows_csv, tmp_path / "out.csv", deployment, ray_cluster, "--url", triton_server.url)
    assert_same_rows(tmp_path / "out.csv", reference)
    assert summary["requests_per_server"][triton_server.url] > 0
    assert "Triton gRPC" in summary["backend"]


def write_parquet_folder(rows: list[dict[str, str]], folder: Path, files: int) -> Path:
    """The rows in `files` Parquet files, named so that their name order is the rows' order;
    sample_ids as integers, as a Parquet export often stores them."""
    folder.mkdir()
    size = -(-len(rows) // files)
    for number in range(files):
        part = rows[number * size:(number + 1) * size]
        pq.write_table(pa.table({
            "sample_id": pa.array([int(r["sample_id"]) for r in part], pa.int64()),
            "catalog_content": [r["catalog_content"] for r in part],
            "image_link": [r["image_link"] or None for r in part],
        }), folder / f"part-{number:03d}.parquet")
    return folder


def test_a_parquet_folder_gives_the_csv_prices(tmp_path, deployment, rows_csv, ray_cluster, in_process_reference):
    folder = write_parquet_folder(read_rows(rows_csv), tmp_path / "catalogue", files=3)
    summary = run_on_ray(folder, tmp_path / "out.csv", deployment, ray_cluster)
    assert_same_rows(tmp_path / "out.csv", in_process_reference)
    assert summary["predicted_now"] == ROWS


@pytest.mark.parametrize("kind", ["csv", "parquet", "parquet-without-links"])
def test_bad_inputs_are_refused_before_any_work(tmp_path, deployment, rows_csv, ray_cluster, kind):
    rows = read_rows(rows_csv)[:20]
    rows[17]["sample_id"] = rows[4]["sample_id"]
    if kind == "csv":
        path = tmp_path / "rows.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        expected = f"1 duplicate sample_id(s): '{rows[4]['sample_id']}' in rows 5, 18"
    else:
        path = write_parquet_folder(rows, tmp_path / "catalogue", files=2)
        expected = (f"1 duplicate sample_id(s): '{rows[4]['sample_id']}' in rows 5, 18 "
                    "(rows numbered across its 2 files in name order)")
        if kind == "parquet-without-links":
            pq.write_table(pq.read_table(path / "part-001.parquet").drop_columns(["image_link"]),
                           path / "part-001.parquet")
            expected = "part-001.parquet: missing required column(s) image_link"
    output = tmp_path / "out.csv"
    result = subprocess.run(ray_command(path, output, deployment, ray_cluster), capture_output=True, text=True,
                            cwd=PROJECT, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2
    assert expected in result.stderr
    assert not output.exists() and not parts_folder(output).exists()


def wait_for_parts(folder: Path, count: int, run: subprocess.Popen) -> int:
    """Waits until `folder` holds at least `count` finished blocks; returns how many it holds."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        done = len(list(folder.glob("block-*.json"))) if folder.is_dir() else 0
        if done >= count:
            return done
        assert run.poll() is None, f"the run ended before {count} blocks were done: {run.communicate()[1][-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} finished blocks after {RUN_TIMEOUT_S} s")


def actor_pids(cluster: LocalRayCluster) -> set[int]:
    return {pid for pid, command in cluster.processes() if ACTOR in command}


def test_a_worker_killed_mid_run_costs_only_its_block(tmp_path, deployment, rows_csv, ray_cluster,
                                                      in_process_reference):
    output = tmp_path / "out.csv"
    run = subprocess.Popen(ray_command(rows_csv, output, deployment, ray_cluster), cwd=PROJECT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_parts(parts_folder(output), 1, run)
        workers = actor_pids(ray_cluster)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        _, stderr = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["blocks"]["predicted_now"] == BLOCKS and sum(summary["blocks_per_worker"].values()) == BLOCKS
    pids_that_worked = {int(worker.rsplit(":", 1)[1]) for worker in summary["blocks_per_worker"]}
    assert pids_that_worked - workers, "no restarted worker predicted the lost block"
    assert_same_rows(output, in_process_reference)


def test_a_killed_driver_is_resumed_with_only_the_unfinished_blocks(tmp_path, deployment, rows_csv, ray_cluster,
                                                                    in_process_reference):
    output = tmp_path / "out.csv"
    command = ray_command(rows_csv, output, deployment, ray_cluster)
    run = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_parts(parts_folder(output), 2, run)
    finally:
        run.kill()
        run.wait()
    done = len(list(parts_folder(output).glob("block-*.json")))
    assert 2 <= done < BLOCKS and not output.exists()

    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["blocks"]["resumed"] == done and summary["blocks"]["predicted_now"] == BLOCKS - done
    assert summary["predicted_now"] == ROWS - done * BLOCK_ROWS
    assert summary["resumed_from_journal"] == done * BLOCK_ROWS
    assert_same_rows(output, in_process_reference)


def test_without_ray_installed_the_option_names_the_extra(tmp_path, deployment):
    """A machine that predicts alone has no ray (nor pyarrow): the client imports, and --ray says what to install."""
    script = (
        "import sys\n"
        "for blocked in ('ray', 'pyarrow'):\n"
        "    sys.modules[blocked] = None\n"
        "from client.cli import main\n"
        f"sys.exit(main(['predict', {str(SAMPLE / 'test.csv')!r}, '-o', {str(tmp_path / 'out.csv')!r},"
        f" '-d', {str(deployment)!r}, '--ray', '127.0.0.1:1', '-q']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT,
                            timeout=RUN_TIMEOUT_S)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "client predict --ray needs Ray: pip install 'multimodal-price[ray]'" in result.stderr
