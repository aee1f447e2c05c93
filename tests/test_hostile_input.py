"""Hostile and careless input: one bad row, image, path or keystroke costs that row its image
(or the run, with a clear message), never the machine, the other rows or the user's files."""

from __future__ import annotations

import csv
import http.server
import io
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from client.bundle import BUNDLE_DIR, MANIFEST_FILE, Deployment
from client.cli import main as client_main
from client.errors import BundleError, InputError
from client.images import OCR_MAX_ASPECT, OCR_MAX_SIDE, ImageFetcher, ImageStatus, load_images
from client.links import LinkPolicy
from client.ocr import OCR_BATCH_IMAGES, make_ocr_engine
from client.predict import PredictConfig
from client.table import read_catalog_csv
from export.cli import main as export_main
from tests.conftest import PROJECT, SAMPLE, input_ids
from tests.loopback import serving
from training.cli import main as train_main

HEADER = "sample_id,catalog_content,image_link\n"
THIN_SHAPES = [(1, 5000), (5000, 1), (40, 2000), (2000, 40)]


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def thin_image(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(image).text((0, 0), "CABLE 2M USB-C 3A " * 40, fill="black")
    return image


# -- 1. images of any shape: bounded memory and time -----------------------------------------------


@pytest.mark.parametrize(("width", "height"), THIN_SHAPES)
def test_thin_images_reach_ocr_in_a_bounded_shape(tmp_path, width, height):
    thin_image(width, height).save(tmp_path / "thin.png")
    prepared = load_images(ImageFetcher(tmp_path), ["https://cdn.example/thin.png"], ocr_max_side=OCR_MAX_SIDE)[0]
    assert prepared.status is ImageStatus.OK
    rows, cols = prepared.ocr_pixels.shape[:2]
    assert max(rows, cols) <= OCR_MAX_SIDE
    assert max(rows, cols) <= OCR_MAX_ASPECT * min(rows, cols)
    assert prepared.pixels.shape == (256, 256, 3)


def test_ocr_refuses_an_unbounded_array_instead_of_exhausting_memory():
    engine = make_ocr_engine("rapidocr")
    with pytest.raises(ValueError, match="thinner than 1:4"):
        engine.read(np.full((1, 5000, 3), 255, dtype=np.uint8))


def test_thin_images_cost_their_own_row_at_most_under_a_memory_cap(tmp_path, deployment):
    """The client in a process limited to 6 GiB of address space: before the fix a 1 x 5,000 px
    PNG alone asked OCR for 22 GB."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for number, (width, height) in enumerate(THIN_SHAPES):
        thin_image(width, height).save(images / f"thin{number}.png")
        rows.append([f"t{number}", f"Item Name: USB cable {number} m", f"https://cdn.example/thin{number}.png"])
    source = tmp_path / "thin.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([HEADER.strip().split(","), *rows])
    output = tmp_path / "out.csv"
    limit = 6 * 2**30

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "client", "predict", str(source), "-o", str(output), "-d", str(deployment),
         "--images", str(images), "--cache-dir", str(tmp_path / "cache"), "--details", str(tmp_path / "d.csv"), "-q"],
        capture_output=True, text=True, cwd=PROJECT, timeout=600, preexec_fn=cap_memory,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with output.open(newline="") as handle:
        prices = {r["sample_id"]: float(r["price"]) for r in csv.DictReader(handle)}
    assert list(prices) == ["t0", "t1", "t2", "t3"] and all(p > 0 for p in prices.values())
    with (tmp_path / "d.csv").open(newline="") as handle:
        assert {r["image_status"] for r in csv.DictReader(handle)} == {"ok"}


# -- 2 and 5. output paths: checked before any work, never overwriting an input --------------------


def predict_cli(*args: str) -> int:
    return client_main(["predict", *map(str, args), "-q"])


@pytest.fixture
def user_folder(tmp_path) -> Path:
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(SAMPLE / "test.csv", folder / "input.csv")
    (folder / "old_predictions.csv").write_text("sample_id,price\n1,2.0\n")
    return folder


@pytest.mark.parametrize("outputs", [
    ["-o", "input.csv"],
    ["-o", "out.csv", "--summary", "input.csv"],
    ["-o", "out.csv", "--details", "input.csv"],
    ["-o", "out.csv", "--details", "out.csv"],
    ["-o", "out.csv", "--summary", "out.csv.journal"],
    ["-o", "sub/../input.csv"],
])
def test_an_output_that_would_overwrite_an_input_or_another_output_is_refused(
        user_folder, deployment, capsys, monkeypatch, outputs):
    monkeypatch.chdir(user_folder)
    (user_folder / "sub").mkdir()
    before = files_in(user_folder)
    assert predict_cli("input.csv", "-d", deployment, *outputs) == 2
    message = capsys.readouterr().err
    assert message.startswith("client predict: error: ") and "Traceback" not in message
    assert "input CSV" in message or "same file" in message
    assert files_in(user_folder) == before


def test_a_hard_link_to_the_input_is_the_input(user_folder, deployment, capsys):
    os.link(user_folder / "input.csv", user_folder / "alias.csv")
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", user_folder / "alias.csv") == 2
    assert "is the input CSV" in capsys.readouterr().err


def test_output_folder_unwritable_or_a_folder_is_refused_before_any_work(user_folder, deployment, capsys):
    before = files_in(user_folder)
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", user_folder) == 2
    assert "is a folder" in capsys.readouterr().err
    blocked = user_folder / "old_predictions.csv" / "out.csv"  # its "folder" is a file
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", blocked) == 2
    assert "cannot write in" in capsys.readouterr().err
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", deployment / "bundle" / "x.csv") == 2
    assert "inside the deployment" in capsys.readouterr().err
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", user_folder / "o.csv",
                       "--cache-dir", deployment) == 2
    assert "--cache-dir" in capsys.readouterr().err
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", "/dev/null") == 2
    assert "not a regular file" in capsys.readouterr().err
    assert Path("/dev/null").is_char_device()
    assert files_in(user_folder) == before


def test_summary_in_a_new_folder_is_written_and_nothing_else_is_left(user_folder, deployment, tmp_path):
    cache = tmp_path / "cache"
    summary = user_folder / "reports" / "summary.json"
    assert predict_cli(user_folder / "input.csv", "-d", deployment, "-o", user_folder / "out.csv",
                       "--summary", summary, "--cache-dir", cache) == 0
    assert json.loads(summary.read_text())["rows"] == len(input_ids(user_folder / "input.csv"))
    assert sorted(files_in(user_folder)) == ["input.csv", "old_predictions.csv", "out.csv", "reports/summary.json"]


# -- 3 and 4. encodings and malformed CSV: an error naming the line --------------------------------


def write_bytes(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_non_utf8_files_name_the_line_and_the_fix(tmp_path):
    text = HEADER + "1,Tea,\n2,Café crème 12 oz,\n"
    path = write_bytes(tmp_path, "cp1252.csv", text.encode("cp1252"))
    with pytest.raises(InputError, match=r"line 3: .* not valid utf-8: save the file as UTF-8.*--encoding cp1252"):
        read_catalog_csv(path)
    assert read_catalog_csv(path, encoding="cp1252").texts == ["Tea", "Café crème 12 oz"]
    assert read_catalog_csv(path, encoding="latin-1").texts[1] == "Café crème 12 oz"
    with pytest.raises(InputError, match="unknown encoding 'klingon'"):
        read_catalog_csv(path, encoding="klingon")


@pytest.mark.parametrize("codec", ["utf-16", "utf-8-sig", "utf-32"])
def test_files_with_a_byte_order_mark_are_read_as_they_say(tmp_path, codec):
    path = write_bytes(tmp_path, "bom.csv", (HEADER + "1,Café,\r\n2,Tea,\r\n").encode(codec))
    table = read_catalog_csv(path)
    assert table.sample_ids == ["1", "2"] and table.texts == ["Café", "Tea"]


MALFORMED = {
    "unclosed quote that swallows rows": (
        HEADER + '1,a,https://x/1.jpg\n2,"b,https://x/2.jpg\n3,c,https://x/3.jpg\n4,d",https://x/4.jpg\n',
        "line 3: a quoted field runs on over line 4"),
    "unclosed quote up to the end": (HEADER + '1,a,https://x/1.jpg\n2,"b,https://x/2.jpg\n3,c,\n',
                                     "line 3: malformed CSV: unexpected end of data"),
    "text after a closing quote": (HEADER + '1,a,\n2,"b" c,\n', "line 3: malformed CSV"),
    "too many fields (an unquoted comma)": (HEADER + "1,Tea, 20 bags,https://x/1.jpg\n",
                                            "line 2: 4 field(s), the header has 3"),
    "too few fields": (HEADER + "1,Tea\n2,Coffee,\n", "line 2: 2 field(s), the header has 3"),
    "a line break in a link": (HEADER + '1,Tea,"https://x/\n1.jpg"\n', "line 2: a line break inside"),
    "a repeated column": ("sample_id,catalog_content,image_link,image_link\n1,a,,\n", "more than once"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_csv_is_refused_with_the_line(tmp_path, case):
    text, expected = MALFORMED[case]
    with pytest.raises(InputError, match=re.escape(expected)):
        read_catalog_csv(write_bytes(tmp_path, "bad.csv", text.encode()))


def test_multi_line_texts_and_blank_lines_are_fine(tmp_path):
    text = HEADER + '1,"Item Name: Tea\nBullet Point: 20 bags, green",https://x/1.jpg\n\n2,Coffee,\n'
    table = read_catalog_csv(write_bytes(tmp_path, "ok.csv", text.encode()))
    assert table.sample_ids == ["1", "2"] and table.texts[0].endswith("20 bags, green")


def test_a_device_or_folder_as_input_is_refused(tmp_path):
    for path in (Path("/dev/zero"), tmp_path):
        with pytest.raises(InputError, match="not a regular file"):
            read_catalog_csv(path)


def test_train_and_predict_report_bad_csvs_without_a_traceback(tmp_path, deployment, capsys):
    bad = write_bytes(tmp_path, "bad.csv", (HEADER.strip() + ",price\n1,Café,,3.5\n").encode("cp1252"))
    assert train_main([str(bad), "-o", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith(f"train: error: {bad}: line 2")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert predict_cli(bad, "-d", deployment, "-o", tmp_path / "new" / "out.csv") == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # a refused input leaves no output folder behind


# -- 5. broken deployments and run folders: errors, and nothing deleted -----------------------------


@pytest.mark.parametrize("manifest", ['{"files": {"a": ', '{"version": 1}', "[]", ""])
def test_a_truncated_or_incomplete_manifest_is_a_bundle_error(deployment_copy, manifest):
    (deployment_copy / BUNDLE_DIR / MANIFEST_FILE).write_text(manifest)
    with pytest.raises(BundleError, match="export"):
        Deployment.load(deployment_copy)


def test_export_refuses_a_bad_run_folder_and_never_deletes_a_foreign_output(tmp_path, sample_run, capsys):
    assert export_main([str(tmp_path / "no_run"), "-o", str(tmp_path / "out")]) == 2
    assert "no run.json" in capsys.readouterr().err
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    assert export_main([str(sample_run), "-o", str(precious)]) == 2
    assert "other files in it" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert export_main([str(sample_run), "-o", str(sample_run.parent)]) == 2
    assert "holds the training run" in capsys.readouterr().err
    assert (sample_run / "run.json").is_file()


# -- 7. option values --------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--batch-size", "--max-in-flight", "--wave-rows", "--ocr-workers"])
def test_zero_where_one_is_the_least_is_a_usage_error(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        client_main(["predict", "in.csv", option, "0"])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_the_api_refuses_the_same_values():
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        PredictConfig(input_csv=Path("a.csv"), output_csv=Path("b.csv"), deployment=Path("d"), max_in_flight=0)


# -- 8. links: public http(s) only, unless the user allows more --------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "::1", "fe80::1", "fd00::5", "::ffff:10.0.0.1",
                                     "224.0.0.1"])
def test_non_public_addresses_are_refused_by_default(address):
    """A pure check: no connection is made to any of these."""
    assert not LinkPolicy().address_allowed(address)
    assert LinkPolicy.from_options(allow_private_addresses=True).address_allowed(address)


def test_public_addresses_and_allowed_networks_are_allowed():
    assert LinkPolicy().address_allowed("93.184.216.34") and LinkPolicy().address_allowed("2606:4700::1111")
    policy = LinkPolicy.from_options(networks=["10.20.0.0/16"])
    assert policy.address_allowed("10.20.3.4") and not policy.address_allowed("10.21.3.4")


def test_local_files_are_read_only_through_images_or_when_allowed(tmp_path):
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "photo.png")
    fetcher = ImageFetcher(images)
    for link in (secret.as_uri(), str(secret), f"file://localhost{secret}"):
        fetched = fetcher.fetch(link)
        assert fetched.status is ImageStatus.REFUSED and fetched.data is None, link
        assert "--allow-local-files" in fetched.detail
    assert fetcher.fetch("https://cdn.example/x/photo.png").status is ImageStatus.OK  # matched by name in --images
    assert fetcher.fetch("../secret.png").status is ImageStatus.REFUSED
    assert ImageFetcher(policy=LinkPolicy(allow_local_files=True)).fetch(str(secret)).status is ImageStatus.OK


class _Redirects(http.server.BaseHTTPRequestHandler):
    """Serves an image at /img.png and redirects /to?<url> to <url>."""

    image = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/to?"):
            self.send_response(302)
            self.send_header("Location", self.path.split("?", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)


@pytest.fixture(scope="module")
def loopback() -> Iterator[str]:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    _Redirects.image = buffer.getvalue()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirects)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_loopback_is_refused_by_address_and_by_name(loopback):
    port = loopback.split(":")[1]
    fetcher = ImageFetcher(retries=0)
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "0.0.0.0"):
        fetched = fetcher.fetch(f"http://{host}:{port}/img.png")
        assert fetched.status is ImageStatus.REFUSED, (host, fetched.detail)
    allowed = ImageFetcher(retries=0, policy=LinkPolicy.from_options(allow_private_addresses=True))
    assert allowed.fetch(f"http://localhost:{port}/img.png").status is ImageStatus.OK


def test_redirects_are_checked_again(loopback):
    only_this_host = LinkPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    fetcher = ImageFetcher(retries=0, policy=only_this_host)
    port = loopback.split(":")[1]
    assert fetcher.fetch(f"http://{loopback}/to?http://{loopback}/img.png").status is ImageStatus.OK
    to_other = fetcher.fetch(f"http://{loopback}/to?http://127.0.0.2:{port}/img.png")
    assert to_other.status is ImageStatus.REFUSED and "127.0.0.2" in to_other.detail
    to_file = fetcher.fetch(f"http://{loopback}/to?file:///etc/passwd")
    assert to_file.status is ImageStatus.REFUSED and to_file.data is None


class _KeepAliveRedirects(_Redirects):
    protocol_version = "HTTP/1.1"


def test_a_pooled_connection_opens_no_way_to_a_refused_address(loopback):  # loopback: the image to serve
    """A kept-alive connection to the allowed host waits in the pool; a redirect from that host
    to 127.0.0.2 is still refused when its connection opens. A server listens there too, so a
    connection opened without the check would fetch the image."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("this machine has no 127.0.0.2")
    only_this_host = LinkPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
    fetcher = ImageFetcher(retries=0, policy=only_this_host)
    with serving(_KeepAliveRedirects) as allowed, serving(_KeepAliveRedirects, host="127.0.0.2") as refused:
        assert fetcher.fetch(f"http://{allowed.netloc}/img.png").status is ImageStatus.OK
        redirected = fetcher.fetch(f"http://{allowed.netloc}/to?http://{refused.netloc}/img.png")
        assert redirected.status is ImageStatus.REFUSED and "127.0.0.2" in redirected.detail
        assert fetcher.fetch(f"http://{allowed.netloc}/img.png").status is ImageStatus.OK
    assert refused.connections == 0
    assert allowed.connections == 1  # the redirect came over the pooled connection, which stayed open


def test_a_refused_link_costs_its_row_the_image_only(tmp_path, deployment, capsys):
    source = tmp_path / "links.csv"
    source.write_text(HEADER + "a,Item Name: Tea 20 bags,file:///etc/passwd\nb,Item Name: Coffee 12 oz,/etc/hostname\n")
    assert predict_cli(source, "-d", deployment, "-o", tmp_path / "out.csv", "--details", tmp_path / "d.csv",
                       "--cache-dir", tmp_path / "cache") == 0
    with (tmp_path / "d.csv").open(newline="") as handle:
        details = list(csv.DictReader(handle))
    assert [d["image_status"] for d in details] == ["refused", "refused"]
    assert all(float(d["price"]) > 0 and "local file link refused" in d["warnings"] for d in details)


# -- 6. Ctrl-C ---------------------------------------------------------------------------------------


@pytest.fixture
def labelled_rows(tmp_path) -> Path:
    """The sample's 300 training rows without prices (60 photos, 58 readable)."""
    rows = tmp_path / "rows.csv"
    with (SAMPLE / "train.csv").open(newline="", encoding="utf-8") as source, rows.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=["sample_id", "catalog_content", "image_link"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(csv.DictReader(source))
    return rows


def interrupt_when(command: list[str], ready, timeout_s: float = 300) -> tuple[subprocess.Popen, str]:
    """Starts `command`, sends SIGINT once `ready()` is true, returns the process and its stderr."""
    process = subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return process, stderr


def line_count(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def predict_command(rows: Path, output: Path, deployment: Path, cache: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "client", "predict", str(rows), "-o", str(output), "-d", str(deployment),
            "--images", str(SAMPLE / "images"), "--cache-dir", str(cache), "-q", *options]


def test_ctrl_c_during_a_wave_of_ocr_stops_at_the_next_group_of_images(tmp_path, deployment, labelled_rows):
    """One 512-row wave holds all 300 rows: interrupted while its 58 photos go through OCR, the run
    must not finish the wave's OCR first (it did, for a minute, before). OCR reads groups of
    OCR_BATCH_IMAGES: the groups being read when it is interrupted (one per worker) finish, the
    groups still queued are dropped."""
    ocr_cache = tmp_path / "cache" / "ocr_cache.jsonl"
    workers = 2
    command = predict_command(labelled_rows, tmp_path / "out.csv", deployment, tmp_path / "cache",
                              "--ocr-workers", str(workers))
    process, stderr = interrupt_when(command, lambda: line_count(ocr_cache) >= 2)
    assert process.returncode == 130, stderr[-3000:]
    assert "0 finished row(s)" in stderr and "Traceback" not in stderr
    # of 58: at most the groups done when interrupted and one per worker after
    assert line_count(ocr_cache) <= (2 + workers) * OCR_BATCH_IMAGES < 58


def test_ctrl_c_stops_soon_keeps_finished_batches_and_a_rerun_resumes(tmp_path, deployment, labelled_rows):
    output = tmp_path / "out.csv"
    journal = output.with_name(output.name + ".journal")
    command = predict_command(labelled_rows, output, deployment, tmp_path / "cache", "--wave-rows", "24",
                              "--batch-size", "8")
    process, stderr = interrupt_when(command, lambda: line_count(journal) > 16)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "run the same command again" in stderr
    kept = line_count(journal) - 1
    assert 16 <= kept < 300 and f"{kept} finished row(s)" in stderr
    assert not output.exists()

    resumed = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.splitlines()[0])["resumed_from_journal"] == kept
    with output.open(newline="") as handle:
        assert len({r["sample_id"] for r in csv.DictReader(handle)}) == 300
