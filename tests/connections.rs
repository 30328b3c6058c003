//! Hostile and careless clients on real sockets: slow headers, idle keep-alives, stalled
//! bodies, declared bodies over the limit, compressed bodies, and more connections than the
//! limit. The server closes what it must, keeps answering everyone else (health checks
//! included), and drains at once. See: issue 14 (D, G).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestServer, shipped_models};
use retort_server::config::{Config, ServerSection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> Config {
    let mut config = Config::serving(shipped_models());
    config.server.header_read_timeout_ms = 300;
    config.server.body_read_timeout_ms = 300;
    config
}

/// [`config`] with its connection settings changed by `change`.
fn with(change: impl FnOnce(&mut ServerSection)) -> Config {
    let mut config = config();
    change(&mut config.server);
    config
}

/// Reads until the peer closes (or `within` passes); returns what was read, and whether the
/// peer closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_keep_alives_are_closed_after_the_header_timeout() {
    let server = TestServer::start(config()).await;
    // A slowloris client: headers begun, never finished.
    let mut slow = connect(server.addr).await;
    slow.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    // A client that sent one request and keeps the connection open, idle.
    let mut idle = connect(server.addr).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let (slow_read, slow_closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let (idle_read, idle_closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(slow_closed && idle_closed, "still open after {:?}", started.elapsed());
    assert!(!slow_read.contains("200 OK"), "{slow_read}");
    assert!(idle_read.starts_with("HTTP/1.1 200"), "{idle_read}");
    let metrics = server.get("/metrics").await.text();
    assert!(
        metric(&metrics, "retort_connections_closed_total{reason=\"header_timeout\"}") >= 1.0,
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_declared_oversize_body_413_before_it_is_sent() {
    let server = TestServer::start(config()).await;
    let mut stalled = connect(server.addr).await;
    stalled
        .write_all(b"POST /v1/rank HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"context\":")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"code\":\"body_timeout\""), "{reply}");

    let mut huge = connect(server.addr).await;
    let started = Instant::now();
    huge.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let (reply, _) = read_until_closed(&mut huge, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"code\":\"body_too_large\""), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered only after {:?}", started.elapsed());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_body_is_refused_with_415() {
    let server = TestServer::start(config()).await;
    let req = hyper::Request::post(server.url("/v1/rank"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(http_body_util::Full::new(hyper::body::Bytes::from_static(b"\x1f\x8b\x08\x00")))
        .unwrap();
    let r = server.send(req).await;
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unsupported_encoding");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("gzip"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_idle_sockets_make_room_and_health_checks_answer() {
    let server =
        TestServer::start(with(|s| (s.max_connections, s.header_read_timeout_ms) = (8, 30_000))).await;
    // Twenty silent sockets against a limit of eight.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect(server.addr).await);
    }
    for _ in 0..5 {
        let r = server.get("/healthz").await;
        assert_eq!(r.status, 200);
    }
    let r = server.rank(&common::request(5, 1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = server.get("/metrics").await.text();
    assert!(
        metric(&metrics, "retort_connections_closed_total{reason=\"idle_evicted\"}") >= 12.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "retort_connections_open ") <= 8.0, "{metrics}");
    drop(idle);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_a_new_one_is_refused_and_counted() {
    let server = TestServer::start(with(|s| {
        (s.max_connections, s.body_read_timeout_ms, s.header_read_timeout_ms) = (3, 3_000, 30_000)
    }))
    .await;
    // Three requests in flight, their bodies stalled.
    let mut busy = Vec::new();
    for _ in 0..3 {
        let mut s = connect(server.addr).await;
        s.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
            .await
            .unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = connect(server.addr).await;
    let _ = refused.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (reply, closed) = read_until_closed(&mut refused, Duration::from_secs(2)).await;
    assert!(closed && reply.is_empty(), "{reply}");
    // Once the stalled bodies time out, connections serve again.
    for s in &mut busy {
        let (reply, _) = read_until_closed(s, Duration::from_secs(6)).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    }
    drop(busy);
    let metrics = server.get("/metrics").await.text();
    assert!(metric(&metrics, "retort_connections_closed_total{reason=\"refused\"}") >= 1.0, "{metrics}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_or_slow_connections() {
    let server =
        TestServer::start(with(|s| (s.drain_timeout_ms, s.header_read_timeout_ms) = (30_000, 30_000))).await;
    let mut held = Vec::new();
    for i in 0..10 {
        let mut s = connect(server.addr).await;
        if i % 2 == 0 {
            s.write_all(b"POST /v1/rank HTTP/1.1\r\nHost: local").await.unwrap();
        } else {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "drain took {:?}", started.elapsed());
}
