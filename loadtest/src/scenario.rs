//! The scenarios: `steady` at one rate; `find-max`, rising rates until p99 breaks the SLO;
//! `swap`, steady load while versions are loaded, promoted and rolled back through the admin
//! API; `overload`, a multiple of capacity with a budget on every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;

use crate::Error;
use crate::driver::{self, HttpClient, Load};
use crate::report::Summary;
use crate::target::Target;

/// Where and what to send.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub bodies: Vec<Bytes>,
    /// The load of a phase; scenarios change its rate.
    pub load: Load,
    /// An unreported phase at the same rate first, to open connections and warm the server.
    pub warmup: Duration,
}

impl Plan {
    async fn phase(&self, client: &HttpClient, label: &str, rate: f64, duration: Duration) -> Summary {
        let load = Load { rate, duration, ..self.load.clone() };
        Summary::of(label, &driver::run(client, &self.target, &self.bodies, &load).await)
    }

    async fn warm(&self, client: &HttpClient, rate: f64) {
        if !self.warmup.is_zero() {
            self.phase(client, "warm-up", rate, self.warmup).await;
        }
    }
}

pub async fn steady(plan: &Plan) -> Vec<Summary> {
    let client = driver::client();
    plan.warm(&client, plan.load.rate).await;
    vec![plan.phase(&client, "steady", plan.load.rate, plan.load.duration).await]
}

/// `find-max`: the rate rises by `step` per phase, from `start`, until the p99 of 200 answers
/// exceeds the SLO or more than 0.1% of requests are not answered 200 (a server may keep its
/// p99 by refusing work; that does not count as holding the rate).
#[derive(Debug, Clone, Copy)]
pub struct FindMax {
    pub start: f64,
    pub step: f64,
    pub max: f64,
    pub slo_p99: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct MaxRate {
    /// The highest rate that held the SLO, if any did.
    pub held: Option<f64>,
    /// Its achieved rate (answers per second).
    pub achieved: Option<f64>,
    pub slo_p99_ms: f64,
}

pub fn holds(s: &Summary, slo_p99: Duration) -> bool {
    let not_ok = s.sent - s.count("200");
    s.count("200") > 0 && s.ok_p99() <= slo_p99 && (not_ok as f64) <= 0.001 * s.sent as f64
}

pub async fn find_max(plan: &Plan, f: FindMax) -> (Vec<Summary>, MaxRate) {
    let client = driver::client();
    plan.warm(&client, f.start).await;
    let mut phases = Vec::new();
    let mut best = MaxRate { held: None, achieved: None, slo_p99_ms: f.slo_p99.as_secs_f64() * 1e3 };
    let mut rate = f.start;
    while rate <= f.max {
        let s = plan.phase(&client, &format!("{rate:.0}/s"), rate, plan.load.duration).await;
        let held = holds(&s, f.slo_p99);
        let achieved = s.achieved_rate;
        phases.push(s);
        if !held {
            break;
        }
        best.held = Some(rate);
        best.achieved = Some(achieved);
        rate *= f.step.max(1.01);
        // Let a queue the last phase built drain before the next one starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (phases, best)
}

/// `swap`: versions loaded, promoted and rolled back every `every` through the admin API.
#[derive(Debug, Clone)]
pub struct Swap {
    pub admin_token: Option<String>,
    pub model: String,
    pub version: String,
    pub every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapResult {
    /// Promotions and rollbacks done during the swapping phase.
    pub swaps: usize,
    /// p99 of all answers while swapping over p99 of the steady phase.
    pub p99_ratio: f64,
}

pub async fn swap(plan: &Plan, s: &Swap) -> Result<(Vec<Summary>, SwapResult), Error> {
    let client = driver::client();
    plan.warm(&client, plan.load.rate).await;
    let steady = plan.phase(&client, "steady", plan.load.rate, plan.load.duration).await;
    let swapping = Arc::new(AtomicBool::new(true));
    let swaps = Arc::new(AtomicUsize::new(0));
    let admin = {
        let (swapping, swaps, s, target) = (swapping.clone(), swaps.clone(), s.clone(), plan.target.clone());
        tokio::spawn(async move {
            let client = driver::client();
            let base = target.url(&format!("/v1/models/{}", s.model));
            while swapping.load(Ordering::Relaxed) {
                // A version rolled back from is retired; it is loaded again each time (a 409
                // means it is still loaded, which is as good).
                admin(&client, &format!("{base}/versions/{}/load", s.version), &s.admin_token, &[200, 409])
                    .await?;
                admin(&client, &format!("{base}/versions/{}/promote", s.version), &s.admin_token, &[200])
                    .await?;
                swaps.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(s.every).await;
                admin(&client, &format!("{base}/rollback"), &s.admin_token, &[200]).await?;
                swaps.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(s.every).await;
            }
            Ok::<(), Error>(())
        })
    };
    let during = plan.phase(&client, "swapping", plan.load.rate, plan.load.duration).await;
    swapping.store(false, Ordering::Relaxed);
    admin.await.map_err(|e| Error::Admin { call: "swap loop".into(), message: e.to_string() })??;
    let result = SwapResult {
        swaps: swaps.load(Ordering::Relaxed),
        p99_ratio: during.latency_ms.p99 / steady.latency_ms.p99.max(1e-9),
    };
    Ok((vec![steady, during], result))
}

async fn admin(client: &HttpClient, url: &str, token: &Option<String>, ok: &[u16]) -> Result<(), Error> {
    let mut req = hyper::Request::post(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new())).expect("a valid admin request");
    let failed = |message: String| Error::Admin { call: url.to_string(), message };
    let response = client.request(req).await.map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes();
    if ok.contains(&status) {
        Ok(())
    } else {
        Err(failed(format!("{status}: {}", String::from_utf8_lossy(&body))))
    }
}

/// `overload`: `factor` times `capacity`, every request with the plan's budget.
#[derive(Debug, Clone, Serialize)]
pub struct OverloadResult {
    pub capacity: f64,
    pub rate: f64,
    pub budget_ms: Option<f64>,
    /// p99 of 200 answers over the budget.
    pub admitted_p99_over_budget: Option<f64>,
    /// Share of requests refused (429 or 503).
    pub shed_share: f64,
    pub shed_p99_ms: f64,
    /// Every request of the light phase right after the overload answered in full.
    pub recovered: bool,
}

pub async fn overload(plan: &Plan, capacity: f64, factor: f64) -> (Vec<Summary>, OverloadResult) {
    let client = driver::client();
    plan.warm(&client, capacity / 2.0).await;
    let rate = capacity * factor;
    let s = plan.phase(&client, &format!("{factor}x capacity"), rate, plan.load.duration).await;
    // Straight after, a third of capacity: the server should be back to full answers at once.
    let after = plan.phase(&client, "after", capacity / 3.0, Duration::from_secs(2)).await;
    let budget = plan.load.budget_header_ms;
    let result = OverloadResult {
        capacity,
        rate,
        budget_ms: budget,
        admitted_p99_over_budget: budget.map(|b| s.ok_latency_ms.p99 / b),
        shed_share: (s.count("429") + s.count("503")) as f64 / s.sent.max(1) as f64,
        shed_p99_ms: s.refused_latency_ms.p99,
        recovered: after.count("200") == after.sent && after.degraded.is_empty(),
    };
    (vec![s, after], result)
}
