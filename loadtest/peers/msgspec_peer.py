"""The strongest Python stack a team would build for retort's job: msgspec, numpy, onnxruntime
and granian (RSGI), with the garbage collector frozen after load.

It serves a retort model package with the same API and ranking semantics as retort's
POST /v1/rank: features encoded as the manifest says (categorical ids hashed with FNV-1a into
buckets, numbers normalised, vectors, defaults for missing values), candidates as ids looked up
in a retort catalog package (or carrying their own features, which win over the catalog's), the
graph run once per request with the context row broadcast, heads combined with the objective,
the best `top_k` (100 unless the request says) best first, per-head values when asked.

Written for speed: msgspec decodes the body straight into typed structs; the catalog's items
are encoded once at load into one numpy array per item input, so a request by ids is a dict
lookup per id and one `take` per input; bucket hashes are memoised (ids repeat); one
onnxruntime session per worker with one intra-op thread (granian runs a worker process per
core); `gc.freeze()` after load keeps the collector off the loaded package.

    PEER_PACKAGE=models/music-ranker/1 PEER_CATALOG=catalogs/music/1 \\
        granian --interface rsgi --workers 2 --host 127.0.0.1 --port 8091 msgspec_peer:app
"""

import gc
import math
import os
import tomllib
from typing import Any, Optional, Union

import msgspec
import numpy as np
import onnxruntime as ort

from encoding import bucket, id_text, input_layout

# Candidates an answer lists when the request sets no `top_k`, as retort's default.
DEFAULT_TOP_K = 100


class Candidate(msgspec.Struct, forbid_unknown_fields=True):
    id: Union[str, int]
    features: dict[str, Any] = {}
    prior: Optional[float] = None


class RankRequest(msgspec.Struct, forbid_unknown_fields=True):
    context: dict[str, Any]
    candidates: list[Union[str, int, Candidate]]
    request_id: Optional[str] = None
    model: Optional[str] = None
    budget_ms: Optional[float] = None
    objective: Optional[dict[str, float]] = None
    top_k: Optional[int] = None
    heads: bool = False


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def read_catalog(directory: str) -> tuple[list[str], dict[str, list]]:
    """A retort catalog package (docs/catalog.md): its ids, and each column's values (None
    where missing)."""
    with open(os.path.join(directory, "catalog.toml"), "rb") as f:
        manifest = tomllib.load(f)
    with open(os.path.join(directory, "items.bin"), "rb") as f:
        data = f.read()
    if data[:8] != b"RTCAT\0\0\x01":
        raise ValueError(f"{directory}/items.bin is not a retort catalog")
    n = manifest["catalog"]["items"]
    at = 8

    def strings() -> list[str]:
        nonlocal at
        offsets = np.frombuffer(data, dtype="<u4", count=n + 1, offset=at)
        at += 4 * (n + 1)
        text = data[at : at + int(offsets[-1])]
        at += int(offsets[-1])
        return [text[offsets[i] : offsets[i + 1]].decode() for i in range(n)]

    ids = strings()
    columns = {}
    for column in manifest.get("columns", []):
        kind = column["kind"]
        if kind == "categorical":
            values = strings()
            present = data[at : at + n]
            at += n
            columns[column["name"]] = [v if present[i] else None for i, v in enumerate(values)]
        else:
            width = column.get("dim", 1)
            values = np.frombuffer(data, dtype="<f8", count=n * width, offset=at).reshape(n, width)
            at += 8 * n * width
            if kind == "number":
                columns[column["name"]] = [None if math.isnan(v) else float(v) for v in values[:, 0]]
            else:
                columns[column["name"]] = [None if math.isnan(row[0]) else row.tolist() for row in values]
    return ids, columns


def ort_session(directory: str) -> ort.InferenceSession:
    """The package's graph on onnxruntime with one thread: one worker per core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    path = os.path.join(directory, "model.onnx")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class Package:
    def __init__(self, directory: str, catalog: Optional[str], session: bool = True):
        """`session=False` for a front whose graph runs elsewhere (the Triton peer)."""
        with open(os.path.join(directory, "manifest.toml"), "rb") as f:
            self.manifest = tomllib.load(f)
        self.session = ort_session(directory) if session else None
        model = self.manifest["model"]
        self.name, self.version = model["name"], model["version"]
        self.context_once = model.get("context_rows", "once") == "once"
        self.inputs = input_layout(self.manifest["features"])
        self.item_features = {f["name"] for f in self.manifest["features"] if f["side"] == "item"}
        self.heads = self.manifest["heads"]
        self.serving = [h for h in self.heads if h.get("serving", True)]
        self.serving_names = {h["name"] for h in self.serving}
        self.outputs = sorted({h["output"] for h in self.heads})
        self.default_objective = self.manifest.get("objective", {})
        self.catalog = None
        if catalog:
            self.load_catalog(catalog)

    def load_catalog(self, directory: str):
        """Every item's item inputs, encoded once: one array per item input, a row per item."""
        with open(os.path.join(directory, "catalog.toml"), "rb") as f:
            about = tomllib.load(f)["catalog"]
        self.id_column, self.catalog_name, self.catalog_version = about["id_column"], about["name"], about["version"]
        ids, columns = read_catalog(directory)
        self.index = {item: row for row, item in enumerate(ids)}
        self.catalog_columns = columns
        self.encoded = {}
        for name, spec in self.inputs.items():
            if spec["side"] != "item":
                continue
            out = np.zeros((len(ids), spec["width"]), dtype=spec["dtype"])
            for f, offset, width in spec["features"]:
                if f["name"] == self.id_column and f["name"] not in columns:
                    values = ids
                else:
                    values = columns.get(f["name"], [None] * len(ids))
                column = [self.encode_value(f, v, f"item {ids[i]}") for i, v in enumerate(values)]
                out[:, offset : offset + width] = np.asarray(column, dtype=spec["dtype"]).reshape(len(ids), width)
            self.encoded[name] = out
        self.catalog = directory

    def encode_value(self, f: dict, value: Any, where: str):
        kind = f["kind"]
        if kind == "categorical":
            if value is None:
                return bucket(str(f["default"]), f["buckets"]) if "default" in f else 0
            text = id_text(value)
            if text is None:
                raise BadRequest(422, "invalid_feature", f"{where}, feature `{f['name']}`: expected a string or integer id")
            return bucket(text, f["buckets"])
        if kind == "number":
            mean, std = f.get("mean", 0.0), f.get("std", 1.0)
            if value is None:
                return (f.get("default", 0.0) - mean) / std
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(422, "invalid_feature", f"{where}, feature `{f['name']}`: expected a number")
            v = (value - mean) / std
            if not math.isfinite(v):
                raise BadRequest(422, "invalid_feature", f"{where}, feature `{f['name']}`: value is not finite")
            return v
        dim = f["dim"]
        if value is None:
            return f.get("default", [0.0] * dim)
        if not isinstance(value, list) or len(value) != dim:
            raise BadRequest(422, "invalid_feature", f"{where}, feature `{f['name']}`: expected a list of {dim} numbers")
        return value

    def candidate_value(self, f: dict, candidate: Any, row: int):
        """A candidate's value of item feature `f`: its own, else its catalog item's."""
        if isinstance(candidate, Candidate) and f["name"] in candidate.features:
            return candidate.features[f["name"]]
        if self.catalog is None:
            return None
        if f["name"] == self.id_column:
            return candidate.id if isinstance(candidate, Candidate) else candidate
        column = self.catalog_columns.get(f["name"])
        return None if row < 0 or column is None else column[row]

    def tensors(self, request: RankRequest) -> tuple[dict[str, np.ndarray], list]:
        """The graph's inputs, and the candidates sent as ids alone that the catalog lacks."""
        candidates = request.candidates
        n = len(candidates)
        ids = [c.id if isinstance(c, Candidate) else c for c in candidates]
        rows = [-1] * n
        slow = list(range(n))
        if self.catalog is not None:
            index = self.index
            rows = [index.get(i if isinstance(i, str) else str(i), -1) for i in ids]
            # Found, and giving no item feature of its own: the catalog's encoded row as is.
            slow = [
                k
                for k, c in enumerate(candidates)
                if rows[k] < 0 or (isinstance(c, Candidate) and not self.item_features.isdisjoint(c.features))
            ]
        feeds = {}
        for name, spec in self.inputs.items():
            if spec["side"] == "context":
                rows_out = 1 if self.context_once else n
                out = np.zeros((rows_out, spec["width"]), dtype=spec["dtype"])
                for f, offset, width in spec["features"]:
                    v = self.encode_value(f, request.context.get(f["name"]), "context")
                    out[:, offset : offset + width] = np.asarray(v, dtype=spec["dtype"]).reshape(1, width)
            elif self.catalog is not None:
                out = self.encoded[name].take(np.maximum(rows, 0), axis=0)
                for k in slow:
                    for f, offset, width in spec["features"]:
                        v = self.encode_value(f, self.candidate_value(f, candidates[k], rows[k]), f"candidate {k}")
                        out[k, offset : offset + width] = v
            else:
                out = np.zeros((n, spec["width"]), dtype=spec["dtype"])
                for f, offset, width in spec["features"]:
                    column = [self.encode_value(f, self.candidate_value(f, c, -1), f"candidate {k}") for k, c in enumerate(candidates)]
                    out[:, offset : offset + width] = np.asarray(column, dtype=spec["dtype"]).reshape(n, width)
            feeds[name] = out
        misses = [ids[k] for k in slow if rows[k] < 0 and not isinstance(candidates[k], Candidate)]
        return feeds, misses

    def prepare(self, request: RankRequest) -> Optional[tuple[dict[str, np.ndarray], list]]:
        """The graph's inputs and the catalog's misses, or None when there is nothing to rank;
        the objective checked first."""
        for head in self.weights(request):
            if head not in self.serving_names:
                raise BadRequest(422, "invalid_objective", f"objective names unknown head `{head}`")
        if not request.candidates:
            return None
        return self.tensors(request)

    def weights(self, request: RankRequest) -> dict[str, float]:
        return request.objective if request.objective is not None else self.default_objective

    def answer(self, request: RankRequest, outputs: Optional[dict[str, np.ndarray]], misses: list) -> dict:
        """The answer from the graph's outputs by name (None for no candidates)."""
        answer = {"request_id": request.request_id, "model": self.name, "version": self.version, "items": [], "degraded": None}
        if outputs is None:
            return answer
        n = len(request.candidates)
        values = {}
        for h in self.heads:
            v = outputs[h["output"]].reshape(n, -1)[:, h.get("column", 0)]
            if h.get("transform", "none") == "sigmoid":
                v = 1.0 / (1.0 + np.exp(-v))
            values[h["name"]] = v
        score = np.zeros(n, dtype=np.float32)
        for head, w in self.weights(request).items():
            score += np.float32(w) * values[head]
        k = min(n, request.top_k if request.top_k is not None else DEFAULT_TOP_K)
        order = np.argsort(-score, kind="stable")[:k].tolist()
        scores = score.tolist()
        ids = [c.id if isinstance(c, Candidate) else c for c in request.candidates]
        if request.heads:
            columns = {h["name"]: values[h["name"]].tolist() for h in self.serving}
            answer["items"] = [{"id": ids[i], "score": scores[i], "heads": {h: v[i] for h, v in columns.items()}} for i in order]
        else:
            answer["items"] = [{"id": ids[i], "score": scores[i]} for i in order]
        if self.catalog is not None:
            answer["catalog"] = {"name": self.catalog_name, "version": self.catalog_version, "misses": misses}
        return answer

    def rank(self, request: RankRequest) -> dict:
        prepared = self.prepare(request)
        if prepared is None:
            return self.answer(request, None, [])
        feeds, misses = prepared
        return self.answer(request, dict(zip(self.outputs, self.session.run(self.outputs, feeds))), misses)


DECODER = msgspec.json.Decoder(RankRequest)
ENCODER = msgspec.json.Encoder()
JSON = [("content-type", "application/json")]


def decode(body: bytes) -> RankRequest:
    try:
        return DECODER.decode(body)
    except msgspec.ValidationError as e:
        raise BadRequest(422, "invalid_request", str(e)) from e
    except msgspec.DecodeError as e:
        raise BadRequest(400, "malformed_json", str(e)) from e


def is_rank(scope) -> bool:
    return scope.path == "/v1/rank" and scope.method == "POST"


def answer_other(scope, proto) -> None:
    """The routes besides POST /v1/rank: /healthz, and 404 for anything else."""
    if scope.path == "/healthz":
        proto.response_bytes(200, JSON, b'{"ok": true}')
    else:
        proto.response_bytes(404, JSON, b'{"error": {"code": "not_found"}}')


def error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, ENCODER.encode({"error": {"code": code, "message": message}})


class App:
    def __init__(self):
        self.package: Optional[Package] = None

    def __rsgi_init__(self, loop):
        self.package = Package(os.environ["PEER_PACKAGE"], os.environ.get("PEER_CATALOG"))
        # Everything loaded so far lives as long as the worker: keep the collector off it.
        gc.collect()
        gc.freeze()

    def handle(self, body: bytes) -> tuple[int, bytes]:
        try:
            return 200, ENCODER.encode(self.package.rank(decode(body)))
        except BadRequest as e:
            return error(e.status, e.code, str(e))

    async def __rsgi__(self, scope, proto):
        if is_rank(scope):
            status, out = self.handle(await proto())
            proto.response_bytes(status, JSON, out)
        else:
            answer_other(scope, proto)


app = App()
