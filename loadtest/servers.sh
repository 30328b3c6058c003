# Sourced by compare.sh, compare_peers.sh and cpu_per_request.sh: retort (with ort where ORT_DYLIB_PATH is set), the
# load generator and the Python peers built (msgspec, Triton, FastAPI); the server under test in the background, stopped on
# exit, and waiting for it to answer.

features=()
engines=(tract)
if [ -n "${ORT_DYLIB_PATH:-}" ]; then
    features=(--features ort)
    engines+=(ort)
fi
cargo build --release --quiet "${features[@]}" --bin retort
cargo build --release --quiet -p loadtest
python="$(loadtest/peers/setup.sh | tail -1)"

server_pid=""
triton_pid=""
stop() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
    if [ -n "$triton_pid" ]; then
        # PyTriton's process stops tritonserver (and its Python backend stub) on SIGTERM, and waits.
        kill "$triton_pid" 2>/dev/null || true
        wait "$triton_pid" 2>/dev/null || true
        triton_pid=""
    fi
}
trap stop EXIT

wait_up() { # port path
    for _ in $(seq 1 300); do
        if curl -sf -o /dev/null "http://127.0.0.1:$1$2"; then
            return 0
        fi
        sleep 0.1
    done
    echo "server on port $1 did not come up" >&2
    exit 1
}

start_msgspec() { # port package catalog log: the strongest Python peer, one granian worker on core 0
    local root="$PWD"
    (cd loadtest/peers && PEER_PACKAGE="$root/$2" PEER_CATALOG="$root/$3" \
        exec taskset -c 0 "$(dirname "$python")/granian" --interface rsgi --workers 1 --host 127.0.0.1 \
        --port "$1" msgspec_peer:app) >"$4" 2>&1 &
    server_pid=$!
    wait_up "$1" /healthz
}

start_triton() { # port package catalog log: Triton (PyTriton) serving the graph, the msgspec front calling it, all on core 0
    local root="$PWD" grpc=$(($1 + 1)) http=$(($1 + 2))
    # PyTriton's Python backend stub links libpython: it needs Python's library directory.
    local libdir
    libdir="$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
    (cd loadtest/peers && PEER_PACKAGE="$root/$2" TRITON_GRPC_PORT="$grpc" TRITON_HTTP_PORT="$http" \
        LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        exec taskset -c 0 "$python" triton_peer.py) >"$4.triton" 2>&1 &
    triton_pid=$!
    wait_up "$http" /v2/models/ranker/ready
    (cd loadtest/peers && PEER_PACKAGE="$root/$2" PEER_CATALOG="$root/$3" TRITON_GRPC_PORT="$grpc" \
        exec taskset -c 0 "$(dirname "$python")/granian" --interface rsgi --workers 1 --host 127.0.0.1 \
        --port "$1" triton_peer:app) >"$4" 2>&1 &
    server_pid=$!
    wait_up "$1" /healthz
}
