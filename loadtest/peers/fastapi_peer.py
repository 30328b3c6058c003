"""The server a team would write instead of retort: FastAPI + uvicorn + onnxruntime.

It serves a retort model package (manifest.toml + model.onnx) with the same JSON API and the
same ranking semantics as retort's POST /v1/rank: features encoded as the manifest says
(categorical ids hashed with FNV-1a into buckets, numbers normalised, vectors, defaults for
missing values), the graph run once per request on all candidates, head values combined with
the objective, sorted best first, cut to top_k (100 by default), per-head values when asked.

Written the way a competent team would: pydantic request models, numpy to lay out the
tensors, one onnxruntime session per worker process with one intra-op thread (uvicorn runs
one worker per core), the bucket of each id memoised (ids repeat), orjson responses. The
context goes in once per request and the graph broadcasts it, exactly as retort feeds it:
the comparison measures the serving stack, not a difference in work.

    python fastapi_peer.py --package models/music-ranker/1 --port 8090 --workers 2
"""

import argparse
import contextlib
import math
import os
import tomllib
from typing import Any, Optional

import numpy as np
import onnxruntime as ort

from fastapi import FastAPI, HTTPException
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel

from encoding import bucket, id_text, input_layout


class Candidate(BaseModel):
    id: str
    features: dict[str, Any] = {}
    prior: Optional[float] = None


class RankRequest(BaseModel):
    request_id: Optional[str] = None
    model: Optional[str] = None
    budget_ms: Optional[float] = None
    context: dict[str, Any]
    candidates: list[Candidate]
    objective: Optional[dict[str, float]] = None
    top_k: Optional[int] = None
    heads: bool = False


class Package:
    def __init__(self, directory: str):
        with open(os.path.join(directory, "manifest.toml"), "rb") as f:
            self.manifest = tomllib.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(directory, "model.onnx"), options, providers=["CPUExecutionProvider"])
        model = self.manifest["model"]
        self.name = model["name"]
        self.version = model["version"]
        self.context_once = model.get("context_rows", "per_row") == "once"
        self.inputs = input_layout(self.manifest["features"])
        self.heads = self.manifest["heads"]
        self.serving = [h for h in self.heads if h.get("serving", True)]
        self.outputs = sorted({h["output"] for h in self.heads})
        self.default_objective = self.manifest.get("objective", {})

    def encode_value(self, f: dict, value: Any, where: str):
        kind = f["kind"]
        if kind == "categorical":
            if value is None:
                return bucket(f["default"], f["buckets"]) if "default" in f else 0
            text = id_text(value)
            if text is None:
                raise HTTPException(422, {"error": {"code": "invalid_feature", "message": f"{where}, feature `{f['name']}`: not an id"}})
            return bucket(text, f["buckets"])
        if kind == "number":
            mean, std = f["mean"], f["std"]
            if value is None:
                return (f.get("default", mean) - mean) / std
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise HTTPException(422, {"error": {"code": "invalid_feature", "message": f"{where}, feature `{f['name']}`: expected a number"}})
            return (value - mean) / std
        dim = f["dim"]
        if value is None:
            return f.get("default", [0.0] * dim)
        if not isinstance(value, list) or len(value) != dim:
            raise HTTPException(422, {"error": {"code": "invalid_feature", "message": f"{where}, feature `{f['name']}`: expected {dim} numbers"}})
        return value

    def tensors(self, request: RankRequest) -> dict[str, np.ndarray]:
        n = len(request.candidates)
        feeds = {}
        for name, spec in self.inputs.items():
            context = spec["side"] == "context"
            rows = 1 if (context and self.context_once) else n
            out = np.zeros((rows, spec["width"]), dtype=spec["dtype"])
            for f, offset, width in spec["features"]:
                if context:
                    v = self.encode_value(f, request.context.get(f["name"]), "context")
                    out[:, offset : offset + width] = np.asarray(v, dtype=spec["dtype"]).reshape(1, width)
                else:
                    column = [self.encode_value(f, c.features.get(f["name"]), f"candidate {i}") for i, c in enumerate(request.candidates)]
                    out[:, offset : offset + width] = np.asarray(column, dtype=spec["dtype"]).reshape(n, width)
            feeds[name] = out
        return feeds

    def rank(self, request: RankRequest) -> dict:
        weights = request.objective if request.objective is not None else self.default_objective
        for head in weights:
            if head not in {h["name"] for h in self.serving}:
                raise HTTPException(422, {"error": {"code": "invalid_objective", "message": f"unknown head `{head}`"}})
        n = len(request.candidates)
        if n == 0:
            return {"request_id": request.request_id, "model": self.name, "version": self.version, "items": [], "degraded": None}
        outputs = dict(zip(self.outputs, self.session.run(self.outputs, self.tensors(request))))
        values = {}
        for h in self.heads:
            out = outputs[h["output"]]
            v = out.reshape(n, -1)[:, h.get("column", 0)].astype(np.float64)
            if h.get("transform", "none") == "sigmoid":
                v = 1.0 / (1.0 + np.exp(-v))
            values[h["name"]] = v
        score = np.zeros(n)
        for head, w in weights.items():
            score += w * values[head]
        # As retort answers: the best 100 unless the request says, per-head values when asked.
        order = np.argsort(-score, kind="stable")[: request.top_k if request.top_k is not None else 100]
        items = [{"id": request.candidates[i].id, "score": float(score[i])} for i in order]
        if request.heads:
            for item, i in zip(items, order):
                item["heads"] = {h["name"]: float(values[h["name"]][i]) for h in self.serving}
        return {"request_id": request.request_id, "model": self.name, "version": self.version, "items": items, "degraded": None}


package: Optional[Package] = None


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI):
    global package
    package = Package(os.environ["PEER_PACKAGE"])
    yield


app = FastAPI(default_response_class=ORJSONResponse, lifespan=lifespan)


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


@app.post("/v1/rank")
def rank(request: RankRequest) -> dict:
    return package.rank(request)


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, help="a retort model package directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        parser.error("the peer listens on loopback only")
    os.environ["PEER_PACKAGE"] = os.path.abspath(args.package)
    uvicorn.run("fastapi_peer:app", host=args.host, port=args.port, workers=args.workers, log_level="warning", access_log=False, app_dir=os.path.dirname(os.path.abspath(__file__)))
