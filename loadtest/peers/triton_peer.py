"""NVIDIA Triton Inference Server as a team would put it in front of retort's model: Triton
(through PyTriton, PyPI `nvidia-pytriton`) serves the graph, and a front speaking retort's
POST /v1/rank (the msgspec peer's decoding, catalog lookups, encoding and answers) calls it over
gRPC with the async client, so requests in flight overlap in Triton's queue.

Two processes, both started by loadtest/servers.sh (`start_triton`):

    PEER_PACKAGE=models/music-ranker/1 TRITON_GRPC_PORT=8101 TRITON_HTTP_PORT=8102 \\
        python triton_peer.py                     # Triton with the graph bound, until killed
    PEER_PACKAGE=... PEER_CATALOG=catalogs/music/1 TRITON_GRPC_PORT=8101 \\
        granian --interface rsgi --workers 1 --host 127.0.0.1 --port 8091 triton_peer:app

The graph runs on onnxruntime with one thread inside the function PyTriton binds (PyTriton's
Triton carries only the Python backend). The model is bound without batching: a request is
already a batch of candidates with one context row, and Triton's dynamic batcher would join
requests only by repeating each context row per candidate, running the context tower once per
candidate instead of once per request.
"""

import gc
import os
import signal
import sys
from typing import Optional

import numpy as np

from msgspec_peer import ENCODER, JSON, BadRequest, Package, answer_other, decode, error, is_rank, ort_session

MODEL = "ranker"


def serve_model() -> None:
    """Triton with the package's graph bound as `ranker`, on loopback ports, until killed."""
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    directory = os.environ["PEER_PACKAGE"]
    session = ort_session(directory)
    names = [o.name for o in session.get_outputs()]

    def infer(requests):
        return [dict(zip(names, session.run(names, dict(request)))) for request in requests]

    dtypes = {"tensor(int64)": np.int64, "tensor(float)": np.float32}
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=int(os.environ["TRITON_HTTP_PORT"]),
        grpc_address="127.0.0.1",
        grpc_port=int(os.environ["TRITON_GRPC_PORT"]),
        allow_metrics=False,
        log_verbose=0,
        exit_timeout_secs=5,
    )
    # Killed by the benchmark scripts: leave through `with`, which stops tritonserver and waits.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=infer,
            inputs=[Tensor(name=i.name, dtype=dtypes[i.type], shape=(-1, -1)) for i in session.get_inputs()],
            outputs=[Tensor(name=o.name, dtype=dtypes[o.type], shape=(-1, -1)) for o in session.get_outputs()],
            config=ModelConfig(batching=False),
            strict=True,
        )
        triton.serve()


class App:
    """The /v1/rank front: the msgspec peer's request handling, the graph run by Triton."""

    def __init__(self):
        self.package: Optional[Package] = None
        self.client = None

    def __rsgi_init__(self, loop):
        import tritonclient.grpc.aio as grpc

        self.grpc = grpc
        self.package = Package(os.environ["PEER_PACKAGE"], os.environ.get("PEER_CATALOG"), session=False)
        self.client = grpc.InferenceServerClient(f"127.0.0.1:{os.environ['TRITON_GRPC_PORT']}")
        self.requested = [grpc.InferRequestedOutput(name) for name in self.package.outputs]
        gc.collect()
        gc.freeze()

    async def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in feeds.items():
            tensor = self.grpc.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = await self.client.infer(MODEL, inputs, outputs=self.requested)
        return {name: result.as_numpy(name) for name in self.package.outputs}

    async def handle(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = decode(body)
            prepared = self.package.prepare(request)
            if prepared is None:
                return 200, ENCODER.encode(self.package.answer(request, None, []))
            feeds, misses = prepared
            outputs = await self.infer(feeds)
            return 200, ENCODER.encode(self.package.answer(request, outputs, misses))
        except BadRequest as e:
            return error(e.status, e.code, str(e))

    async def __rsgi__(self, scope, proto):
        if is_rank(scope):
            status, out = await self.handle(await proto())
            proto.response_bytes(status, JSON, out)
        else:
            answer_other(scope, proto)


app = App()

if __name__ == "__main__":
    serve_model()
