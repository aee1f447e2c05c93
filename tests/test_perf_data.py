"""`client perf-data`: perf_analyzer's --input-data JSON, fed back through the deployment."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from client.blend import COMPONENT_OUTPUTS, to_price
from client.bundle import Deployment
from client.cli import main
from client.images import ImageFetcher
from client.inference import InProcessBackend
from client.models import ENSEMBLE, TEXT_ONLY_ENSEMBLE
from client.ocr import OcrCache
from client.perf_data import batch_rows, read_perf_data
from client.predict import PredictConfig, Predictor, predict
from client.table import read_catalog_csv
from tests.conftest import SAMPLE, TRUNCATED_SAMPLE_IDS

PHOTO_ROWS = 6
TEXT_ROWS = 10


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory) -> Path:
    """Real sample rows: 6 whose photo is in sample/images, then 10 text rows, their links removed
    (so that nothing is fetched from the network)."""
    photos = {path.name for path in (SAMPLE / "images").iterdir()}
    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["sample_id"] not in TRUNCATED_SAMPLE_IDS]
    with_photo = [r for r in rows if r["image_link"].rsplit("/", 1)[-1] in photos][:PHOTO_ROWS]
    text_only = [{**r, "image_link": ""} for r in rows if r not in with_photo][:TEXT_ROWS]
    path = tmp_path_factory.mktemp("perf-inputs") / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sample_id", "catalog_content", "image_link"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(with_photo + text_only)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("perf-cache")


def write_perf_json(deployment, rows_csv, cache_dir, output: Path, *options: str) -> int:
    return main(["perf-data", str(rows_csv), "-d", str(deployment), "-o", str(output), "--images",
                 str(SAMPLE / "images"), "--cache-dir", str(cache_dir), *options])


@pytest.fixture(scope="module")
def predicted_details(deployment, rows_csv, cache_dir, tmp_path_factory) -> list[dict[str, str]]:
    """`client predict` (in-process) on the same rows: its details file, one line per row."""
    folder = tmp_path_factory.mktemp("perf-predict")
    predict(PredictConfig(input_csv=rows_csv, output_csv=folder / "prices.csv", deployment=deployment,
                          cache_dir=cache_dir, images_dir=SAMPLE / "images", details_csv=folder / "details.csv",
                          progress=False))
    with (folder / "details.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(("ensemble", "rows"), [(TEXT_ONLY_ENSEMBLE, TEXT_ROWS), (ENSEMBLE, PHOTO_ROWS)])
def test_rows_fed_back_in_process_give_client_predicts_estimates(deployment, rows_csv, cache_dir, predicted_details,
                                                                 tmp_path, ensemble, rows):
    output = tmp_path / "rows.json"
    assert write_perf_json(deployment, rows_csv, cache_dir, output, "--ensemble", ensemble) == 0
    loaded = Deployment.load(deployment)
    entries = read_perf_data(output, loaded, ensemble)
    assert len(entries) == rows
    backend = InProcessBackend(loaded)
    outputs = [backend.run(ensemble, request) for request in batch_rows(entries, 1)]
    expected = [r for r in predicted_details if r["has_image"] == str(int(ensemble == ENSEMBLE))]
    assert len(expected) == rows
    # the JSON has no sample ids (rows come sorted by token length): compare each estimate's sorted values
    for component, name in COMPONENT_OUTPUTS.items():
        served = np.sort([to_price(o[name]).item() for o in outputs])
        predicted = np.sort([float(r[component]) for r in expected])
        np.testing.assert_allclose(served, predicted, rtol=1e-4, atol=1e-4, err_msg=component)


@pytest.mark.parametrize(("ensemble", "batch_size"), [(TEXT_ONLY_ENSEMBLE, 4), (ENSEMBLE, 4)])
def test_file_for_batches_holds_the_rows_padded_as_client_predict_pads_a_batch(deployment, rows_csv, cache_dir,
                                                                             tmp_path, ensemble, batch_size):
    output = tmp_path / "rows.json"
    assert write_perf_json(deployment, rows_csv, cache_dir, output, "--ensemble", ensemble,
                           "--batch-size", str(batch_size)) == 0
    loaded = Deployment.load(deployment)
    predictor = Predictor(loaded, InProcessBackend(loaded), ImageFetcher(SAMPLE / "images"),
                          OcrCache(cache_dir / "ocr_cache.jsonl"), ocr_workers=1)
    wave = predictor.prepare(read_catalog_csv(rows_csv), np.arange(PHOTO_ROWS + TEXT_ROWS))
    [one_batch] = [inputs for name, _, inputs in predictor.batches(wave, len(wave.rows)) if name == ensemble]

    rows = read_perf_data(output, loaded, ensemble)
    assert len(rows) == (PHOTO_ROWS if ensemble == ENSEMBLE else TEXT_ROWS)
    sent = batch_rows(rows, batch_size)  # what perf_analyzer -b 4 sends
    assert len(sent) == len(rows) // batch_size
    for number, request in enumerate(sent):
        assert request.keys() == one_batch.keys()
        for name, want in one_batch.items():
            want = want[number * batch_size : (number + 1) * batch_size]
            assert request[name].dtype == want.dtype and np.array_equal(request[name], want), name

    # what perf_analyzer reads: per row, each input's content and its shape without the batch axis,
    # one token length for every row (perf_analyzer -b 4 refuses rows of different shapes)
    entries = json.loads(output.read_text())["data"]
    assert {tuple(entry["input_ids"]["shape"]) for entry in entries} == {one_batch["input_ids"].shape[1:]}
    if ensemble == ENSEMBLE:
        assert entries[0]["image"]["shape"] == [loaded.settings.image_size, loaded.settings.image_size, 3]
        assert set(entries[0]["image"]["content"]) == {"b64"}
        assert "image_embedding" not in entries[0]
    else:
        assert entries[0]["image_embedding"]["content"] == [0.0] * loaded.settings.image_dim


def test_unknown_ensemble_is_refused_with_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["perf-data", str(SAMPLE / "test.csv"), "-o", str(tmp_path / "rows.json"), "--ensemble", "price"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "invalid choice: 'price'" in message
    assert TEXT_ONLY_ENSEMBLE in message and f"'{ENSEMBLE}'" in message


def test_no_row_with_a_photo_is_refused_for_the_image_ensemble(deployment, rows_csv, cache_dir, tmp_path, capsys):
    with rows_csv.open(newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    text_only = tmp_path / "text_only.csv"
    with text_only.open("w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if not r["image_link"])
    output = tmp_path / "rows.json"

    assert write_perf_json(deployment, text_only, cache_dir, output, "--ensemble", ENSEMBLE) == 2
    message = capsys.readouterr().err
    assert f"none of the {TEXT_ROWS} rows has a usable photo, so none goes to {ENSEMBLE}" in message
    assert "--images" in message
    assert not output.exists()


def test_fewer_rows_than_a_batch_are_refused(deployment, rows_csv, cache_dir, tmp_path, capsys):
    output = tmp_path / "rows.json"
    assert write_perf_json(deployment, rows_csv, cache_dir, output, "--batch-size", "32") == 2
    message = capsys.readouterr().err
    assert f"only {TEXT_ROWS} of the rows go to {TEXT_ONLY_ENSEMBLE}, fewer than a batch of 32" in message
    assert not output.exists()
