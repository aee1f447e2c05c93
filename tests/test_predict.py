"""`client predict` end to end: in-process and against real Triton servers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.errors import InferenceError, InputError
from client.links import LinkPolicy
from client.predict import PredictConfig, predict
from client.serve import LocalTritonServer
from tests.conftest import PROJECT, SAMPLE, TRUNCATED_SAMPLE_IDS, input_ids


def read_prices(path: Path) -> dict[str, float]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["sample_id"] for r in rows] == list(dict.fromkeys(r["sample_id"] for r in rows)), "duplicate rows"
    return {r["sample_id"]: float(r["price"]) for r in rows}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("client-cache")


def run_predict(tmp_path, deployment, cache_dir, csv_path, name, **options) -> tuple[Path, dict]:
    output = tmp_path / f"{name}.csv"
    config = PredictConfig(input_csv=csv_path, output_csv=output, deployment=deployment, cache_dir=cache_dir,
                           images_dir=SAMPLE / "images", details_csv=tmp_path / f"{name}.details.csv",
                           progress=False, **options)
    return output, predict(config)


@pytest.fixture(scope="module")
def labelled_rows_csv(tmp_path_factory) -> Path:
    """The sample's training rows without prices: 300 rows, 60 with a photo (2 truncated)."""
    path = tmp_path_factory.mktemp("inputs") / "rows.csv"
    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as source, path.open("w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=["sample_id", "catalog_content", "image_link"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv.DictReader(source))
    return path


def test_in_process_gives_one_positive_price_per_row_in_input_order(tmp_path, deployment, cache_dir):
    output, summary = run_predict(tmp_path, deployment, cache_dir, SAMPLE / "test.csv", "in_process")
    prices = read_prices(output)
    assert list(prices) == input_ids(SAMPLE / "test.csv")
    assert all(np.isfinite(p) and p > 0 for p in prices.values())
    assert summary["rows"] == summary["predicted_now"] == len(prices)
    assert not output.with_name(output.name + ".journal").exists()


def read_ocr_cache(cache: Path) -> dict[str, str]:
    """Image SHA-256 -> the text the run's OCR read (its OCR cache, one JSON line per image)."""
    lines = (cache / "ocr_cache.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["sha256"]: record["text"] for record in map(json.loads, lines)}


def test_triton_and_in_process_read_the_same_text_and_agree_on_every_row(
        tmp_path, deployment, triton_server, labelled_rows_csv):
    """Empty caches on both sides: every photo is read by the served OCR networks, in-process on
    one side and on the Triton server on the other."""
    statistics = grpcclient.InferenceServerClient(triton_server.url)
    before = statistics.get_inference_statistics("ocr_recognizer", as_json=True)["model_stats"][0]
    local, local_summary = run_predict(tmp_path, deployment, tmp_path / "local-cache", labelled_rows_csv, "local")
    remote, remote_summary = run_predict(tmp_path, deployment, tmp_path / "remote-cache", labelled_rows_csv,
                                         "remote", urls=[triton_server.url])
    after = statistics.get_inference_statistics("ocr_recognizer", as_json=True)["model_stats"][0]
    local_texts, remote_texts = read_ocr_cache(tmp_path / "local-cache"), read_ocr_cache(tmp_path / "remote-cache")
    assert len(local_texts) == 58 and sum(1 for text in local_texts.values() if text) >= 40
    assert remote_texts == local_texts
    assert int(after["inference_count"]) > int(before.get("inference_count", 0))  # the server read them
    local_prices, remote_prices = read_prices(local), read_prices(remote)
    assert list(local_prices) == list(remote_prices) == input_ids(labelled_rows_csv)
    np.testing.assert_allclose(list(remote_prices.values()), list(local_prices.values()), rtol=1e-5)
    assert local_summary["images"]["ok"] == remote_summary["images"]["ok"] == 58


def test_reproduces_the_reported_validation_predictions(tmp_path, deployment, cache_dir, sample_run, labelled_rows_csv):
    output, _ = run_predict(tmp_path, deployment, cache_dir, labelled_rows_csv, "validation")
    served = read_prices(output)
    with (sample_run / "validation_predictions.csv").open(newline="") as handle:
        reported = {r["sample_id"]: float(r["blend_fitted"]) for r in csv.DictReader(handle)}
    ids = list(reported)
    np.testing.assert_allclose([served[i] for i in ids], [reported[i] for i in ids], rtol=1e-4)


def test_truncated_and_non_image_files_still_get_a_price_and_a_warning(tmp_path, deployment, cache_dir):
    not_an_image = tmp_path / "photo.jpg"
    not_an_image.write_text("<html>this is not a JPEG</html>")
    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = {r["sample_id"]: r for r in csv.DictReader(handle)}
    truncated = SAMPLE / "images" / rows[TRUNCATED_SAMPLE_IDS[0]]["image_link"].rsplit("/", 1)[-1]
    path = tmp_path / "bad_images.csv"
    path.write_text(
        "sample_id,catalog_content,image_link\n"
        f"a,\"Item Name: Tea, 20 Count\",{truncated}\n"
        f"b,\"Item Name: Coffee 12 oz\",file://{not_an_image}\n"
        "c,,ftp://example.invalid/x.jpg\n",
        encoding="utf-8",
    )
    output, summary = run_predict(tmp_path, deployment, cache_dir, path, "bad_images_out",
                                  link_policy=LinkPolicy(allow_local_files=True))
    prices = read_prices(output)
    assert list(prices) == ["a", "b", "c"] and all(p > 0 for p in prices.values())
    with (tmp_path / "bad_images_out.details.csv").open(newline="") as handle:
        details = {r["sample_id"]: r for r in csv.DictReader(handle)}
    assert details["a"]["image_status"] == "truncated" and "truncated" in details["a"]["warnings"]
    assert details["b"]["image_status"] == "not_image" and "predicted from text" in details["b"]["warnings"]
    assert details["c"]["image_status"] == "bad_link" and "empty catalog text" in details["c"]["warnings"]
    assert summary["rows_with_warnings"] == 3


def test_missing_column_is_refused_before_any_inference(tmp_path, deployment, cache_dir, triton_server):
    path = tmp_path / "no_links.csv"
    path.write_text("sample_id,catalog_content\n1,Item Name: Tea\n", encoding="utf-8")
    client = grpcclient.InferenceServerClient(triton_server.url)
    before = client.get_inference_statistics("", as_json=True)
    with pytest.raises(InputError, match="image_link"):
        run_predict(tmp_path, deployment, cache_dir, path, "refused", urls=[triton_server.url])
    assert client.get_inference_statistics("", as_json=True) == before
    assert not (tmp_path / "refused.csv").exists()


def test_a_server_serving_other_model_files_is_refused_before_any_work(
        tmp_path, deployment_copy, cache_dir, triton_server):
    """The client's bundle is re-exported with a changed fusion file (same weights, other bytes):
    self-consistent, but not what the server serves."""
    import onnx

    from client.bundle import write_manifest
    from client.errors import BundleError

    fusion = deployment_copy / "model_repository" / "fusion" / "1" / "model.onnx"
    model = onnx.load(str(fusion))
    model.doc_string = "re-exported"
    onnx.save(model, str(fusion))
    manifest = json.loads((deployment_copy / "bundle" / "manifest.json").read_text())
    write_manifest(deployment_copy, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(BundleError, match="serves fusion with SHA-256"):
        run_predict(tmp_path, deployment_copy, cache_dir, SAMPLE / "test.csv", "mismatch", urls=[triton_server.url])
    assert not (tmp_path / "mismatch.csv").exists()


def test_two_servers_share_the_load(tmp_path, deployment, cache_dir, triton_server, labelled_rows_csv):
    with LocalTritonServer(deployment / "model_repository", work_dir=tmp_path / "second") as second:
        output, summary = run_predict(tmp_path, deployment, cache_dir, labelled_rows_csv, "two_servers",
                                      urls=[triton_server.url, second.url], batch_size=8)
        served_by_second = grpcclient.InferenceServerClient(second.url).get_inference_statistics(
            "price_ensemble_text", as_json=True)["model_stats"][0]
    assert len(read_prices(output)) == 300
    assert all(count > 0 for count in summary["requests_per_server"].values()), summary["requests_per_server"]
    assert int(served_by_second["inference_count"]) > 0


def test_server_killed_mid_run_then_restarted_resumes_without_loss_or_duplicates(
        tmp_path, deployment, cache_dir, labelled_rows_csv):
    server = LocalTritonServer(deployment / "model_repository", work_dir=tmp_path / "first").start()
    port = int(server.url.rsplit(":", 1)[1])
    output = tmp_path / "resumed.csv"
    journal = output.with_name(output.name + ".journal")
    config = PredictConfig(input_csv=labelled_rows_csv, output_csv=output, deployment=deployment,
                           cache_dir=cache_dir, images_dir=SAMPLE / "images", urls=[server.url],
                           batch_size=4, wave_rows=16, max_in_flight=1, retries=1, progress=False)

    def kill_when_some_rows_are_done():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if journal.exists() and len(journal.read_text().splitlines()) > 20:
                server.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_some_rows_are_done)
    killer.start()
    try:
        with pytest.raises(InferenceError):
            predict(config)
    finally:
        killer.join()
        server.stop()
    done_before = len(journal.read_text().splitlines()) - 1
    assert 20 <= done_before < 300 and not output.exists()

    with LocalTritonServer(deployment / "model_repository", grpc_port=port, work_dir=tmp_path / "restarted") as restarted:
        config.urls = [restarted.url]
        summary = predict(config)
    assert summary["resumed_from_journal"] == done_before
    assert summary["predicted_now"] == 300 - done_before
    assert list(read_prices(output)) == input_ids(labelled_rows_csv)


def test_client_runs_against_the_server_with_torch_blocked(tmp_path, deployment, cache_dir, triton_server):
    """The client's install has no torch: its code must never import it (nor training/export)."""
    output = tmp_path / "no_torch.csv"
    script = (
        "import sys\n"
        "for blocked in ('torch', 'transformers', 'sentence_transformers', 'lightgbm', 'training', 'export'):\n"
        "    sys.modules[blocked] = None\n"
        "from client.cli import main\n"
        f"sys.exit(main(['predict', {str(SAMPLE / 'test.csv')!r}, '-o', {str(output)!r}, '-d', {str(deployment)!r},"
        f" '--url', {triton_server.url!r}, '--images', {str(SAMPLE / 'images')!r}, '--cache-dir', {str(cache_dir)!r},"
        " '-q']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(read_prices(output)) == input_ids(SAMPLE / "test.csv")
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["rows"] == summary["rows_with_photo"] == len(input_ids(SAMPLE / "test.csv"))
    assert summary["rows_with_ocr_text"] >= 10  # the photos' text, read through the server
