"""A private Ray cluster on this machine, on loopback only: what `client predict --ray local`, the
tests and the benchmark run on.

`ray start --head --block` runs in a session of its own (so that stopping it stops every
process of the cluster, and nothing else), with no dashboard, no usage statistics and a
bounded object store. Ray turns a loopback node address into the machine's outward address
(so that other nodes could join); `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps it, and every
server of the cluster, on 127.0.0.1. A driver on this machine needs the same setting before it
imports ray (`LOOPBACK_NODE`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from client.errors import MissingDependencyError, ServerStartError
from client.processes import free_port, kill_group, live_processes

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'multimodal-price[ray]'"
_READY_LINE = "Ray runtime started."


NO_USAGE_STATS = {"RAY_USAGE_STATS_ENABLED": "0"}
"""Ray sends no usage statistics anywhere."""
LOOPBACK_NODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""A node address of 127.0.0.1 stays 127.0.0.1 (Ray otherwise swaps in the outward address)."""


def is_loopback(address: str) -> bool:
    """Whether a Ray address ("HOST:PORT") names this machine's loopback interface."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalRayCluster:
    """A one-node Ray cluster bound to 127.0.0.1, started and stopped by this process.

    Args:
        num_cpus: CPUs the node offers to actors.
        object_store_mb: size of its object store (shared memory), in MB.
        ready_timeout_s: how long `start` waits for the cluster.

    Use it as a context manager, or call `start` and `stop`.
    """

    def __init__(self, num_cpus: int, object_store_mb: int = 400, ready_timeout_s: float = 120.0):
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.ready_timeout_s = ready_timeout_s
        self.port: int | None = None
        self._process: subprocess.Popen | None = None
        self._work_dir: Path | None = None

    @property
    def address(self) -> str:
        """The cluster's address, "127.0.0.1:PORT", for `ray.init` and `client predict --ray`."""
        if self.port is None:
            raise RuntimeError("the cluster is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        """The process group of every process of the cluster (its head, raylet and workers)."""
        if self._process is None:
            raise RuntimeError("the cluster is not started")
        return self._process.pid

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalRayCluster:
        """Starts the head node and waits until it is ready.

        Raises:
            MissingDependencyError: Ray is not installed.
            ServerStartError: `ray start` exited, or was not ready in time (its log is quoted).
        """
        ray = Path(sys.executable).with_name("ray")
        command = str(ray) if ray.exists() else shutil.which("ray")
        if command is None:
            raise MissingDependencyError(f"a local Ray cluster needs Ray: {RAY_INSTALL}")
        self._work_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must stay short
        self.port = free_port()
        log_path = self._work_dir / "ray-start.log"
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [command, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                 "--include-dashboard=false", "--disable-usage-stats", "--num-cpus", str(self.num_cpus),
                 "--num-gpus", "0", "--object-store-memory", str(self.object_store_mb * 10**6),
                 "--temp-dir", str(self._work_dir / "session")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **NO_USAGE_STATS, **LOOPBACK_NODE}, start_new_session=True,
            )
        try:
            self._wait_until_ready(log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while _READY_LINE not in log_path.read_text(errors="replace"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
                raise ServerStartError(f"ray start was not ready (exit code {self._process.poll()}):\n{tail}")
            time.sleep(0.2)

    def processes(self) -> Iterator[tuple[int, str]]:
        """(pid, command line) of each live process of the cluster: its process group and their
        descendants (Ray's workers run in sessions of their own, under the raylet)."""
        live = list(live_processes())
        parents = {pid: parent for pid, parent, _ in live}
        members = {pid for pid, _, group in live if group == self.pgid}
        while grown := {pid for pid, parent in parents.items() if parent in members} - members:
            members |= grown
        for pid in sorted(members):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # it has just exited
                continue
            yield pid, command.strip()

    def stop(self) -> None:
        """Stops every process of the cluster at once (SIGKILL to its process group and workers: on SIGTERM
        Ray drains for up to 30 s, and a private cluster holds nothing to keep) and removes its files."""
        if self._process is not None:
            processes = [pid for pid, _ in self.processes()]
            kill_group(self._process.pid)
            for pid in processes:  # the workers run in sessions of their own, outside the group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._process.wait()
            self._process = None
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
