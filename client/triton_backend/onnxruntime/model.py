"""Triton Python-based backend that serves `platform: "onnxruntime_onnx"` models with ONNX Runtime.

`client.serve` copies this file to `<backend-dir>/onnxruntime/model.py`, so the tritonserver
of the nvidia-pytriton wheel (Python backend only) serves the production model configs
unchanged. The configs must list inputs and outputs explicitly, with the graph's names. An
instance of kind GPU runs on its GPU through ONNX Runtime's CUDA provider where this ONNX
Runtime has it (onnxruntime-gpu), otherwise on CPU.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs one ONNX model, merging the requests of a dynamic batch into one session run."""

    def initialize(self, args):
        """Loads `<model_repository>/<version>/model.onnx` into a session on the instance's device.

        Args:
            args: Triton's model arguments (`model_config` as JSON, `model_repository`,
                `model_version`, `model_instance_kind`, `model_instance_device_id`, ...).
        """
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.outputs = [
            (tensor["name"], pb_utils.triton_string_to_numpy(tensor["data_type"]))
            for tensor in config["output"]
        ]
        self.batching = config.get("max_batch_size", 0) > 0
        filename = config.get("default_model_filename") or "model.onnx"
        path = Path(args["model_repository"]) / args["model_version"] / filename

        options = ort.SessionOptions()
        # the config's own thread count (as Triton's onnxruntime backend reads it), else the server's
        threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
        options.intra_op_num_threads = int(threads or os.environ.get("PRICE_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = {"device_id": int(args.get("model_instance_device_id", 0))}
            providers.insert(0, ("CUDAExecutionProvider", device))
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def execute(self, requests):
        """Answers every request; a failing request gets an error, the others their outputs.

        Requests whose inputs have the same non-batch shapes are concatenated along axis 0
        and run once; otherwise (or if that run fails) each request runs on its own.

        Args:
            requests: the `pb_utils.InferenceRequest`s Triton scheduled together.

        Returns:
            One `pb_utils.InferenceResponse` per request, in the same order.
        """
        feeds, responses = {}, {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self._read_inputs(request)
            except Exception as error:  # noqa: BLE001 - reported to the client
                responses[index] = _error_response(error)

        if self.batching and len(feeds) > 1 and _same_item_shapes(feeds.values()):
            try:
                responses.update(self._run_merged(feeds))
            except Exception:  # noqa: BLE001 - rerun one by one so only the bad request fails
                pass
        for index, feed in feeds.items():
            if index not in responses:
                responses[index] = self._run_single(feed)
        return [responses[index] for index in range(len(requests))]

    def finalize(self):
        """Releases the ONNX Runtime session."""
        self.session = None

    def _read_inputs(self, request):
        """Returns the request's inputs as a name -> array feed for the session."""
        feed = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy()
        return feed

    def _run(self, feed):
        """Runs the session and returns the outputs named in the config, in its dtypes."""
        names = [name for name, _ in self.outputs]
        arrays = self.session.run(names, feed)
        return [array.astype(dtype, copy=False) for array, (_, dtype) in zip(arrays, self.outputs)]

    def _run_single(self, feed):
        """Runs one request's feed; errors become that request's error response."""
        try:
            return self._response(self._run(feed))
        except Exception as error:  # noqa: BLE001 - reported to the client
            return _error_response(error)

    def _run_merged(self, feeds):
        """Runs all feeds as one batch and splits the outputs back per request."""
        indices = list(feeds)
        merged = {
            name: np.concatenate([feeds[index][name] for index in indices])
            for name in self.input_names
        }
        rows = [len(feeds[index][self.input_names[0]]) for index in indices]
        bounds = np.cumsum(rows)[:-1]
        pieces = [np.split(array, bounds) for array in self._run(merged)]
        return {
            index: self._response([per_output[position] for per_output in pieces])
            for position, index in enumerate(indices)
        }

    def _response(self, arrays):
        """Wraps output arrays, in config order, into an inference response."""
        tensors = [pb_utils.Tensor(name, array) for (name, _), array in zip(self.outputs, arrays)]
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _same_item_shapes(feeds):
    """Tells whether all feeds have, per input, the same dtype and non-batch shape."""
    signatures = {
        tuple((name, array.dtype.str, array.shape[1:]) for name, array in feed.items())
        for feed in feeds
    }
    return len(signatures) == 1


def _error_response(error):
    """Returns an error response carrying the exception's type and message."""
    message = f"{type(error).__name__}: {error}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
