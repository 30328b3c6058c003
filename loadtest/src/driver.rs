//! One phase of open-loop load: requests leave at their intended times, each timed from that
//! intended time to the last byte of its response.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::requests::Rng;
use crate::target::Target;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    // Without TCP_NODELAY the tail of each request body waits on the server's delayed ACK.
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector)
}

/// How requests are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// Exactly `1 / rate` apart.
    Constant,
    /// Exponential gaps of mean `1 / rate`, as independent users arrive.
    Poisson,
}

/// One phase: a rate, bounded by a duration and a request count.
#[derive(Debug, Clone)]
pub struct Load {
    pub rate: f64,
    pub arrivals: Arrivals,
    pub duration: Duration,
    pub max_requests: u64,
    /// Sent as `x-retort-budget-ms`.
    pub budget_header_ms: Option<f64>,
    /// A request unanswered after this long counts as failed.
    pub timeout: Duration,
    /// Requests waiting for an answer at once; beyond it the generator itself is saturated and
    /// the request is recorded as not sent rather than queued, so memory stays bounded.
    pub max_in_flight: usize,
    pub seed: u64,
}

/// What became of one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Intended send time, from the start of the phase.
    pub at: Duration,
    /// From the intended send time to the end of the response.
    pub latency: Duration,
    pub status: Status,
    /// `degraded.mode` of a 200 answer, if it was degraded.
    pub degraded: Option<String>,
    /// `version` of a 200 answer.
    pub version: Option<String>,
    pub retry_after: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Http(u16),
    Timeout,
    /// Connection refused or reset.
    Failed,
    /// Not sent: `max_in_flight` requests were already waiting.
    NotSent,
}

impl Status {
    pub fn label(self) -> String {
        match self {
            Status::Http(code) => code.to_string(),
            Status::Timeout => "timeout".into(),
            Status::Failed => "connection_failed".into(),
            Status::NotSent => "not_sent".into(),
        }
    }
}

/// A finished phase.
#[derive(Debug, Clone)]
pub struct Run {
    pub load: Load,
    pub outcomes: Vec<Outcome>,
    /// From the first intended send to the last answer.
    pub elapsed: Duration,
}

/// Sends `load` to `POST {target}/v1/rank`, cycling through `bodies`.
///
/// The pacing runs on a thread of its own: tokio's timers tick in whole milliseconds, which
/// would send requests up to a millisecond late and count the generator's lateness as the
/// server's latency. A sleeping thread wakes within tens of microseconds and hands each request
/// to the runtime at its time.
pub async fn run(client: &HttpClient, target: &Target, bodies: &[Bytes], load: &Load) -> Run {
    assert!(!bodies.is_empty(), "no request bodies");
    let url = Arc::new(target.url("/v1/rank"));
    let runtime = tokio::runtime::Handle::current();
    let (client, bodies, paced) = (client.clone(), bodies.to_vec(), load.clone());
    let start = Instant::now();
    let (tasks, not_sent) = tokio::task::spawn_blocking(move || {
        let load = paced;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut rng = Rng(load.seed);
        let mut at = Duration::ZERO;
        let mut tasks = Vec::new();
        let mut not_sent = Vec::new();
        for i in 0..load.max_requests {
            if at > load.duration {
                break;
            }
            let intended = start + at;
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if in_flight.load(Ordering::Relaxed) >= load.max_in_flight {
                not_sent.push(Outcome {
                    at,
                    latency: Duration::ZERO,
                    status: Status::NotSent,
                    degraded: None,
                    version: None,
                    retry_after: false,
                });
            } else {
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (client, url, in_flight) = (client.clone(), url.clone(), in_flight.clone());
                let body = bodies[i as usize % bodies.len()].clone();
                let (budget, timeout) = (load.budget_header_ms, load.timeout);
                tasks.push(runtime.spawn(async move {
                    let outcome = send(&client, &url, body, budget, timeout, intended, at).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    outcome
                }));
            }
            at += gap(&load, &mut rng);
        }
        (tasks, not_sent)
    })
    .await
    .expect("the pacing thread does not panic");
    let mut outcomes = not_sent;
    for task in tasks {
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|o| o.at);
    Run { load: load.clone(), outcomes, elapsed: start.elapsed() }
}

fn gap(load: &Load, rng: &mut Rng) -> Duration {
    let mean = 1.0 / load.rate.max(1e-9);
    match load.arrivals {
        Arrivals::Constant => Duration::from_secs_f64(mean),
        Arrivals::Poisson => Duration::from_secs_f64(-mean * (1.0 - rng.unit()).ln()),
    }
}

async fn send(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    budget_ms: Option<f64>,
    timeout: Duration,
    intended: Instant,
    at: Duration,
) -> Outcome {
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(b) = budget_ms {
        req = req.header("x-retort-budget-ms", b.to_string());
    }
    let req = req.body(Full::new(body)).expect("a request with a valid URL and headers");
    let answered = tokio::time::timeout(timeout, async {
        let response = client.request(req).await?;
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, retry_after, body))
    })
    .await;
    let latency = intended.elapsed();
    let (status, retry_after, body) = match answered {
        Ok(Ok((code, retry_after, body))) => (Status::Http(code), retry_after, Some(body)),
        Ok(Err(_)) => (Status::Failed, false, None),
        Err(_) => (Status::Timeout, false, None),
    };
    let (degraded, version) = match (&status, &body) {
        (Status::Http(200), Some(body)) => (degraded_mode(body), string_field(head(body), b"\"version\":")),
        _ => (None, None),
    };
    Outcome { at, latency, status, degraded, version, retry_after }
}

/// The first bytes of a response, where `version` is; parsing all of a 500-item answer
/// would cost the generator more CPU than the server spends writing it.
fn head(body: &[u8]) -> &[u8] {
    &body[..body.len().min(512)]
}

/// `degraded.mode`, from the end of the response where `degraded` is written.
fn degraded_mode(body: &[u8]) -> Option<String> {
    let tail = &body[body.len().saturating_sub(1024)..];
    let at = find(tail, b"\"degraded\":")?;
    let rest = &tail[at..];
    if rest[b"\"degraded\":".len()..].starts_with(b"null") {
        return None;
    }
    string_field(rest, b"\"mode\":").or_else(|| Some("unknown".into()))
}

/// The string value following `key` in compact JSON.
fn string_field(json: &[u8], key: &[u8]) -> Option<String> {
    let at = find(json, key)? + key.len();
    let rest = json[at..].strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_version_and_degraded_mode_without_parsing_the_items() {
        let full = br#"{"request_id":"r","model":"m","version":"7","items":[{"id":"a","score":0.5}],"degraded":null,"timing_us":{}}"#;
        assert_eq!(string_field(head(full), b"\"version\":").as_deref(), Some("7"));
        assert_eq!(degraded_mode(full), None);
        let cut = br#"{"version":"7","items":[],"degraded":{"reason":"budget","mode":"truncated","scored":3},"timing_us":{}}"#;
        assert_eq!(degraded_mode(cut).as_deref(), Some("truncated"));
    }

    #[test]
    fn poisson_gaps_average_the_rate() {
        let load = Load {
            rate: 1000.0,
            arrivals: Arrivals::Poisson,
            duration: Duration::from_secs(1),
            max_requests: 1,
            budget_header_ms: None,
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
            seed: 3,
        };
        let mut rng = Rng(3);
        let total: f64 = (0..20_000).map(|_| gap(&load, &mut rng).as_secs_f64()).sum();
        assert!((total / 20_000.0 - 1e-3).abs() < 0.03e-3, "{}", total / 20_000.0);
        let constant = Load { arrivals: Arrivals::Constant, ..load };
        assert_eq!(gap(&constant, &mut rng), Duration::from_millis(1));
    }
}
