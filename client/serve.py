"""Start and stop the real `tritonserver` shipped in the nvidia-pytriton wheel, on CPU.

That binary has only the Python backend, so the ONNX models are served by the runner in
`client/triton_backend/onnxruntime/model.py`, installed as a Python-based backend named
`onnxruntime`: configs saying `platform: "onnxruntime_onnx"` load unchanged. The known traps
(see ../shared/notes/triton-on-cpu.md) are checked before the server starts, because each
of them makes it hang at "loading" instead of failing.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from client.errors import MissingDependencyError, ServerStartError
from client.models import OCR_MODELS
from client.processes import free_port, kill_group

logger = logging.getLogger(__name__)

PYTRITON_PIN = "nvidia-pytriton==0.7.0"
_PORT_ATTEMPTS = 4
_EXIT_TIMEOUT_S = 5
_LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class TritonInstall:
    """The pieces of the tritonserver bundled in the nvidia-pytriton wheel.

    Attributes:
        server: the `tritonserver` executable.
        python_backend: the folder holding `libtriton_python.so`.
        stub: the Python backend stub built for the running Python's major.minor.
        libs: the wheel's bundled shared libraries (`nvidia_pytriton.libs`).
    """

    server: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_triton_install() -> TritonInstall:
    """Locates the tritonserver inside the installed nvidia-pytriton wheel, without importing it.

    Returns:
        The paths of the server, the Python backend, the stub and the shared libraries.

    Raises:
        MissingDependencyError: nvidia-pytriton is not installed.
        ServerStartError: the wheel has no stub for the running Python version.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"The local Triton server needs nvidia-pytriton: pip install {PYTRITON_PIN}"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    root = package / "tritonserver"
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        server=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / python_version / "triton_python_backend_stub",
        libs=package.parent / "nvidia_pytriton.libs",
    )
    if not install.server.is_file():
        raise MissingDependencyError(
            f"nvidia-pytriton is installed without {install.server}: "
            f"pip install --force-reinstall {PYTRITON_PIN}"
        )
    if not install.stub.is_file():
        available = sorted(path.name for path in (root / "python_backend_stubs").iterdir())
        raise ServerStartError(
            f"nvidia-pytriton has no Python backend stub for Python {python_version} "
            f"(it has {', '.join(available)}); run the server from a venv of one of those versions."
        )
    return install


def check_numpy_version(version: str) -> None:
    """Refuses numpy >= 2, which breaks the Python backend stub (empty FP32 outputs).

    Args:
        version: the numpy version of the interpreter the stub will run, e.g. "1.26.4".

    Raises:
        ServerStartError: the version is 2 or later.
    """
    major = int(version.split(".")[0])
    if major >= 2:
        raise ServerStartError(
            f"numpy {version} is installed in {sys.prefix}, but Triton's Python backend stub "
            'needs numpy < 2: pip install "numpy<2" (or run the server from its own venv '
            "with numpy<2 and onnxruntime)."
        )


INTRA_OP_THREADS_PARAMETER = "intra_op_thread_count"
"""The model config parameter of ONNX Runtime's threads per instance (the name Triton's
onnxruntime backend reads; client/triton_backend/onnxruntime/model.py reads it too)."""


def cpu_model_repository(source: Path, target: Path, per_core: Collection[str] = OCR_MODELS,
                         cores: int | None = None) -> tuple[Path, list[str]]:
    """Returns a repository whose configs ask for CPU instances only.

    tritonserver refuses to load a model with a `KIND_GPU` instance group on a machine
    without a GPU. Models with such groups get a folder in `target` with the rewritten
    `config.pbtxt` and links to their other files; every other entry is linked unchanged.
    The models of `per_core` (the OCR networks: one small call per image, or per batch of its
    text lines) get one CPU instance per core, each on one thread (ONNX Runtime's
    `intra_op_thread_count`), as `client predict` runs them in-process: one image per core
    reads faster than one image on every core.

    Args:
        source: the model repository to serve.
        target: a folder that does not exist yet, for the rewritten copy.
        per_core: models served with one single-threaded instance per core.
        cores: the cores to count; None: this machine's.

    Returns:
        The repository to serve (`source` itself when nothing needs rewriting) and the names
        of the rewritten models.

    Raises:
        ServerStartError: a `config.pbtxt` cannot be parsed.
    """
    gpu = model_config_pb2.ModelInstanceGroup.KIND_GPU
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    rewritten: dict[str, str] = {}
    for config_path in sorted(source.glob("*/config.pbtxt")):
        try:
            config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        except text_format.ParseError as error:
            raise ServerStartError(f"Cannot parse {config_path}: {error}") from error
        groups = [group for group in config.instance_group if group.kind == gpu]
        for group in groups:
            group.kind = cpu
            del group.gpus[:]
        model = config_path.parent.name
        if model in per_core:
            del config.instance_group[:]
            config.instance_group.add(kind=cpu, count=cores or os.cpu_count() or 1)
            config.parameters[INTRA_OP_THREADS_PARAMETER].string_value = "1"
        if groups or model in per_core:
            rewritten[model] = text_format.MessageToString(config)
    if not rewritten:
        return source, []

    target.mkdir(parents=True)
    for entry in source.resolve().iterdir():
        if entry.name not in rewritten:
            (target / entry.name).symlink_to(entry)
            continue
        (target / entry.name).mkdir()
        for child in entry.iterdir():
            if child.name != "config.pbtxt":
                (target / entry.name / child.name).symlink_to(child)
        (target / entry.name / "config.pbtxt").write_text(rewritten[entry.name])
    logger.info(
        "Serving %s on CPU instances; configs rewritten: %s", source, ", ".join(rewritten)
    )
    return target, sorted(rewritten)


class LocalTritonServer:
    """A tritonserver child process serving a model repository on CPU over gRPC.

    Attributes:
        shm_prefix: the prefix of the server's shared-memory regions in /dev/shm.
        log_path: the server's log file, once started.

    Example:
        >>> with LocalTritonServer(Path("model_repository")) as server:
        ...     client = tritonclient.grpc.InferenceServerClient(server.url)
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        grpc_port: int | None = None,
        work_dir: Path | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
        ort_threads: int = 1,
        cpu_only: bool = True,
    ) -> None:
        """Prepares the server; nothing runs before `start()`.

        Args:
            model_repository: the Triton model repository to serve.
            grpc_port: the gRPC port; a free one is picked (and retried if taken) when None.
            work_dir: where the backend folder (and rewritten repository) go; a temporary
                folder, removed by `stop()`, when None.
            log_path: the server's log file; `<work_dir>/tritonserver.log` when None.
            ready_timeout_s: how long `start()` waits for the server to be ready.
            ort_threads: ONNX Runtime intra-op threads per model instance.
            cpu_only: serve `KIND_GPU` instance groups as `KIND_CPU` (this server has no GPU
                backend; tritonserver refuses KIND_GPU on a machine without a GPU).
        """
        self.model_repository = Path(model_repository)
        self.ready_timeout_s = ready_timeout_s
        self.ort_threads = ort_threads
        self.cpu_only = cpu_only
        self._requested_port = grpc_port
        self._requested_work_dir = work_dir
        self._requested_log_path = log_path
        self.shm_prefix = f"price{uuid.uuid4().hex[:12]}_"
        self._port: int | None = None
        self._process: subprocess.Popen | None = None
        self._work_dir: Path | None = None
        self._owns_work_dir = False
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        """The gRPC address, "127.0.0.1:PORT"."""
        port = self._port or self._requested_port
        if port is None:
            raise RuntimeError("The server has no port yet: call start() first.")
        return f"127.0.0.1:{port}"

    @property
    def pid(self) -> int | None:
        """The tritonserver process id (also its process group id), or None when not started."""
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """Whether the tritonserver process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalTritonServer:
        """Starts tritonserver and waits until it reports ready.

        Returns:
            This server, ready for gRPC requests at `url`.

        Raises:
            MissingDependencyError: nvidia-pytriton is not installed.
            ServerStartError: a known trap was found (before starting), the server exited,
                or it was not ready within `ready_timeout_s`; the message has the log tail.
        """
        install = find_triton_install()
        check_numpy_version(numpy.__version__)
        if not self.model_repository.is_dir():
            raise ServerStartError(
                f"Model repository {self.model_repository} does not exist: "
                "pass the folder that holds the models' config.pbtxt files."
            )

        try:
            self._prepare_work_dir()
            backends = self._build_backend_dir(install)
            repository = self.model_repository
            if self.cpu_only:
                copy = self._work_dir / "model_repository"
                shutil.rmtree(copy, ignore_errors=True)
                repository, _ = cpu_model_repository(repository, copy)
            for _ in range(_PORT_ATTEMPTS):
                self._port = self._requested_port or free_port()
                self._launch(install, backends, repository)
                if self._wait_until_ready():
                    logger.info("tritonserver ready at %s (pid %d)", self.url, self.pid)
                    return self
                self._terminate()
                if self._requested_port is not None:
                    break
                logger.info("gRPC port %d was taken; retrying with another port", self._port)
            raise ServerStartError(f"gRPC port {self._port} is already in use.")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL to its process group) and cleans up.

        Removes the server's shared-memory regions and the temporary work folder. Safe to
        call more than once, and after `kill()`.
        """
        self._terminate()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILLs the server's process group, as a crash would; `stop()` still cleans up."""
        if self._process is None:
            return
        kill_group(self._process.pid)
        self._process.wait()

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _prepare_work_dir(self) -> None:
        """Creates the work folder (temporary unless one was given) and picks the log path."""
        if self._work_dir is None:
            self._owns_work_dir = self._requested_work_dir is None
            self._work_dir = Path(
                self._requested_work_dir or tempfile.mkdtemp(prefix="price-triton-")
            )
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(self._requested_log_path or self._work_dir / "tritonserver.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

    def _build_backend_dir(self, install: TritonInstall) -> Path:
        """Builds a writable backend folder for this Python version.

        `python/` gets the Python backend and this Python's stub; `onnxruntime/` gets only
        our runner (`model.py`): Triton runs a Python-based backend with the stub and
        `libtriton_python.so` of `python/`, so they need not be copied there.
        """
        backends = self._work_dir / "backends"
        shutil.rmtree(backends, ignore_errors=True)
        python_dir = backends / "python"
        shutil.copytree(
            install.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__")
        )
        stub = python_dir / "triton_python_backend_stub"
        shutil.copyfile(install.stub, stub)
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

        runner = importlib.resources.files("client").joinpath(
            "triton_backend", "onnxruntime", "model.py"
        )
        (backends / "onnxruntime").mkdir()
        (backends / "onnxruntime" / "model.py").write_bytes(runner.read_bytes())
        return backends

    def _launch(self, install: TritonInstall, backends: Path, repository: Path) -> None:
        """Starts tritonserver in its own session, logging to `log_path`."""
        command = [
            str(install.server),
            f"--model-repository={repository.resolve()}",
            f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self._port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--exit-timeout-secs={_EXIT_TIMEOUT_S}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--disable-auto-complete-config",
        ]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(install.libs), sysconfig.get_config_var("LIBDIR")]
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PRICE_ORT_THREADS"] = str(self.ort_threads)
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def _wait_until_ready(self) -> bool:
        """Polls readiness over gRPC.

        Returns:
            True when ready; False when the server exited because its port was taken.

        Raises:
            ServerStartError: the server exited for another reason, or timed out.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        with grpcclient.InferenceServerClient(self.url) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    log = self._log_excerpt()
                    if f"'127.0.0.1:{self._port}' already in use" in log:
                        return False
                    raise ServerStartError(
                        f"tritonserver exited with code {code} before it was ready.\n{log}"
                    )
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return True
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"tritonserver was not ready after {self.ready_timeout_s:.0f} s.\n"
                        f"{self._log_excerpt()}"
                    )
                time.sleep(0.1)

    def _log_excerpt(self) -> str:
        """Returns the server log's error lines (such as why a model failed), then its tail."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in lines if re.match(r"E\d{4} ", line)][-_LOG_TAIL_LINES:]
        tail = lines[-_LOG_TAIL_LINES:]
        return "\n".join(["Errors in its log:", *errors, "Last lines of its log:", *tail])

    def _terminate(self) -> None:
        """SIGTERMs the server, waits for it, then SIGKILLs whatever is left of its group."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=_EXIT_TIMEOUT_S + 10)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver (pid %d) ignored SIGTERM", self._process.pid)
        kill_group(self._process.pid)
        self._process.wait()
        self._process = None

    def _cleanup(self) -> None:
        """Removes leftover shared-memory regions and the temporary work folder."""
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self._owns_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None


def run_until_interrupted(server: LocalTritonServer) -> None:
    """Blocks until SIGINT or SIGTERM (or until the server dies), then stops the server.

    Must be called from the main thread (it installs signal handlers, restored on return).

    Args:
        server: a started server.
    """
    interrupted = threading.Event()
    handlers = {
        signum: signal.signal(signum, lambda *_: interrupted.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not interrupted.wait(timeout=1.0):
            if not server.running:
                logger.error("tritonserver exited on its own; see %s", server.log_path)
                break
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        server.stop()
