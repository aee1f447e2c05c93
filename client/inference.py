"""Running the served ensembles: on Triton servers over gRPC, or in-process with ONNX Runtime.

Both backends take the same named input arrays and return the same named outputs, computed by
the same ONNX files, so both modes give the same prices.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

from client.bundle import MODEL_SHA_PARAMETER, Deployment
from client.cpu import cpu_flags
from client.errors import BundleError, InferenceError
from client.models import ENSEMBLE_OUTPUTS, OCR_MODELS, ModelRunner, served_models

logger = logging.getLogger(__name__)


class InferenceBackend(ABC):
    """Runs a served model or ensemble on a batch: `await backend.infer(name, inputs)` -> its
    outputs by name."""

    @abstractmethod
    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    async def verify(self, deployment: Deployment) -> None:  # noqa: B027 - optional hook
        """Checks, before any work, that this backend runs the deployment's models.

        Raises:
            BundleError: it runs other model files than the deployment's.
        """

    def requests_per_server(self) -> dict[str, int]:
        """Requests answered by each server, by address; empty when no server is involved."""
        return {}

    def model_runner(self) -> ModelRunner:
        """A blocking `run(model, inputs) -> outputs` for threads other than the event loop's (the
        threads that read the text of photos), with `run_many` sending several requests at once.
        Call it from a coroutine: the calls go through `infer` on the running loop."""
        return _LoopRunner(self, asyncio.get_running_loop())

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections and threads."""

    def describe(self) -> str:
        return type(self).__name__


class _LoopRunner:
    """Runs models through a backend's `infer` on its event loop, from other threads."""

    def __init__(self, backend: InferenceBackend, loop: asyncio.AbstractEventLoop):
        self.backend = backend
        self.loop = loop

    def __call__(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return asyncio.run_coroutine_threadsafe(self.backend.infer(model, inputs), self.loop).result()

    def run_many(self, model: str, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Runs `model` on every feed, all requests in flight together; outputs in feed order."""

        async def gather() -> list[dict[str, np.ndarray]]:
            return list(await asyncio.gather(*(self.backend.infer(model, feed) for feed in feeds)))

        return asyncio.run_coroutine_threadsafe(gather(), self.loop).result()


class InProcessBackend(InferenceBackend):
    """The ensembles' steps, and the OCR networks, run here with ONNX Runtime over the deployment's model files.

    Args:
        deployment: the verified deployment folder.
        threads: ONNX Runtime intra-op threads (0: ONNX Runtime's default, all cores).
        providers: the execution providers of a model's session, by model name (names, or
            (name, options) pairs, as ONNX Runtime takes them); default: CUDA when this ONNX
            Runtime has it, then CPU, for every model.
    """

    def __init__(self, deployment: Deployment, threads: int = 0,
                 providers: Callable[[str], list[str | tuple[str, dict]]] | None = None):
        needed = deployment.cpu_flags_needed
        if needed and not needed & cpu_flags():
            logger.warning("this deployment's %s profile is built for CPUs with one of %s, which this CPU lacks: "
                           "its INT8 products can overflow here; export it again with --profile cpu-int8 or fp32",
                           deployment.profile, ", ".join(sorted(needed)))
        self.specs = served_models(deployment.settings.dims)
        self.providers = providers or (lambda _: _providers())
        self.sessions = {
            name: ort.InferenceSession(str(deployment.model_path(name)),
                                       _session_options(1 if name in OCR_MODELS else threads),
                                       providers=self.providers(name))
            for name, spec in self.specs.items()
            if not spec.is_ensemble
        }
        # one worker: the sessions already use every core; parallel runs would only contend
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")

    def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a model, or an ensemble's steps in order (each through `run`) as Triton's ensemble
        scheduler would."""
        if not self.specs[model].is_ensemble:
            session = self.sessions[model]
            names = [output.name for output in session.get_outputs()]
            return dict(zip(names, session.run(names, inputs), strict=True))
        tensors = dict(inputs)
        for step_model, input_map, output_map in self.specs[model].steps:
            feed = {step_name: tensors[ensemble_name] for step_name, ensemble_name in input_map.items()}
            outputs = self.run(step_model, feed)
            tensors.update({ensemble_name: outputs[name] for name, ensemble_name in output_map.items()})
        return {name: tensors[name] for name in ENSEMBLE_OUTPUTS}

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, model, inputs)

    def model_runner(self) -> ModelRunner:
        """Runs a model in the calling thread. OCR's sessions have one thread each: an OCR call is
        small (one image, or its text lines), and the threads that read images run them side by
        side, which reads more images per second than one run on every core (measured here: the
        detector takes 81 ms on one thread, 98 ms on two)."""
        return self.run

    async def close(self) -> None:
        self._executor.shutdown(wait=False)

    def describe(self) -> str:
        providers = {str(provider) for session in self.sessions.values() for provider in session.get_providers()}
        return f"in-process ONNX Runtime ({', '.join(sorted(providers))})"


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # idle pool threads would spin between runs, taking cores from row preparation, which
    # runs at the same time in another thread (measured: +8% rows/s without spinning)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class TritonBackend(InferenceBackend):
    """Sends each batch to one of several Triton servers over gRPC (asyncio client).

    Batches are spread round-robin over the servers. A server that answers UNAVAILABLE (down,
    restarting) is retried with jittered exponential backoff, on the next server; any other
    error fails at once.

    Args:
        urls: "host:port" of each server's gRPC endpoint.
        retries: attempts after the first, per batch.
        backoff_s: first backoff; doubled each attempt, with jitter.
        timeout_s: per-request deadline.
    """

    def __init__(self, urls: list[str], *, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 120.0):
        import tritonclient.grpc.aio as grpc_aio

        if not urls:
            raise ValueError("TritonBackend needs at least one server URL")
        self.urls = list(urls)
        self.clients = [grpc_aio.InferenceServerClient(url, channel_args=_channel_args()) for url in self.urls]
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._next = itertools.cycle(range(len(self.clients)))
        self._requests = [0] * len(self.clients)

    def describe(self) -> str:
        return f"Triton gRPC at {', '.join(self.urls)}"

    def requests_per_server(self) -> dict[str, int]:
        return dict(zip(self.urls, self._requests))

    async def verify(self, deployment: Deployment) -> None:
        """Checks every server serves the deployment's models (by the SHA-256 in their config).

        Raises:
            BundleError: a server serves other model files than the bundle was exported with.
            InferenceError: a server cannot be reached or lacks a model.
        """
        for index, url in enumerate(self.urls):
            for name, spec in served_models(deployment.settings.dims).items():
                if spec.is_ensemble:
                    continue
                config, _ = await self._with_retries(
                    lambda client, model=name: client.get_model_config(model, as_json=False), server=index
                )
                served = config.config.parameters[MODEL_SHA_PARAMETER].string_value
                if served != deployment.model_sha256(name):
                    raise BundleError(
                        f"{url} serves {name} with SHA-256 {served or '(none)'}, but the bundle's model is "
                        f"{deployment.model_sha256(name)}: deploy the same export to the server and the client"
                    )

    async def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tritonclient.grpc.aio as grpc_aio
        from tritonclient.utils import np_to_triton_dtype

        request_inputs = []
        for name, array in inputs.items():
            tensor = grpc_aio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request_inputs.append(tensor)

        async def send(client):  # no outputs named: the server returns every output of the model
            return await client.infer(model, request_inputs, client_timeout=self.timeout_s)

        result, server = await self._with_retries(send)
        self._requests[server] += 1
        return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}

    async def _with_retries(self, call, server: int | None = None):
        """Runs `await call(client)` on the next server in turn (or on `server` only), retrying
        UNAVAILABLE only; returns (result, index of the server that answered)."""
        from tritonclient.utils import InferenceServerException

        last_error = None
        for attempt in range(self.retries + 1):
            index = next(self._next) if server is None else server
            try:
                return await call(self.clients[index]), index
            except InferenceServerException as error:
                if not _is_unavailable(error):
                    raise InferenceError(f"{self.urls[index]}: {error.message()}") from error
                last_error = error
            delay = self.backoff_s * 2**attempt * (0.5 + random.random())
            logger.warning("server %s unavailable (attempt %d); retrying in %.1fs", self.urls[index], attempt + 1, delay)
            await asyncio.sleep(delay)
        raise InferenceError(
            f"no Triton server answered after {self.retries + 1} attempts ({', '.join(self.urls)}): "
            f"{last_error.message() if last_error else 'unavailable'}"
        )

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's defaults, plus a subchannel pool of this client's own and short reconnect
    backoff: with gRPC's process-wide pool, a new client to a server that just restarted on the
    same address inherits the old connection's failure backoff (up to minutes) and is refused
    even though the server is up. This client retries UNAVAILABLE itself."""
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def _is_unavailable(error) -> bool:
    """Whether a tritonclient error is gRPC's UNAVAILABLE (tritonclient keeps the code as its str)."""
    import grpc

    return error.status() == str(grpc.StatusCode.UNAVAILABLE)
