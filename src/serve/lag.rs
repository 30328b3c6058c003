//! How long a request waits for the async workers before retort's code sees it. When decoding
//! and answering requests saturates the cores, new requests queue in the runtime (and the
//! kernel) before any handler runs, out of sight of admission control, which then admits them
//! with their budget already spent. A probe task measures that wait: it yields to the back of
//! the run queue and times how long the queue takes to come round to it again, and times how
//! late its timer wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the probe measures.
const EVERY: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub struct Lag {
    /// The recent wait, in microseconds: the newest measurement when it is larger, else a
    /// decaying one, so that a spike counts at once and fades over a few tens of milliseconds.
    micros: AtomicU64,
}

impl Lag {
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    fn record(&self, measured: Duration) {
        let new = measured.as_micros() as u64;
        let _ =
            self.micros.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| Some(new.max(old * 3 / 4)));
    }
}

/// Measures on the current runtime until the runtime shuts down.
pub fn spawn_probe(lag: Arc<Lag>) {
    tokio::spawn(async move {
        loop {
            let yielded = Instant::now();
            tokio::task::yield_now().await;
            let queue = yielded.elapsed();
            // A worker held by one long task shows as a late timer rather than a long queue
            // (tokio's timer ticks in milliseconds, hence the one allowed).
            let slept = Instant::now();
            tokio::time::sleep(EVERY).await;
            let late = slept.elapsed().saturating_sub(EVERY + Duration::from_millis(1));
            lag.record(queue.max(late));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_counts_at_once_and_fades() {
        let lag = Lag::default();
        lag.record(Duration::from_millis(20));
        assert_eq!(lag.current(), Duration::from_millis(20));
        for _ in 0..10 {
            lag.record(Duration::from_micros(10));
        }
        assert!(lag.current() < Duration::from_millis(2), "{:?}", lag.current());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn sees_a_busy_worker() {
        let lag = Arc::new(Lag::default());
        spawn_probe(lag.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Block the only worker for 30 ms: the probe, runnable meanwhile, waits that long.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(30)) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(12)).await;
        assert!(lag.current() >= Duration::from_millis(5), "{:?}", lag.current());
    }
}
