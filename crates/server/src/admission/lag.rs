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

/// Consecutive measurements a wait must show in to count: a queue of requests delays every
/// measurement, while the scheduler's noise (a late wake-up on a busy machine) delays one.
const WINDOW: usize = 4;

#[derive(Debug, Default)]
pub struct Lag {
    /// The least of the last [`WINDOW`] measurements, in microseconds.
    micros: AtomicU64,
}

impl Lag {
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }
}

/// The probe's last measurements.
#[derive(Debug, Default)]
struct Window {
    samples: [u64; WINDOW],
    next: usize,
}

impl Window {
    /// Adds a measurement; returns the least of the window.
    fn push(&mut self, measured: Duration) -> u64 {
        self.samples[self.next] = measured.as_micros() as u64;
        self.next = (self.next + 1) % WINDOW;
        self.samples.iter().copied().min().unwrap_or(0)
    }
}

/// Measures on the current runtime until the runtime shuts down.
pub fn spawn_probe(lag: Arc<Lag>) {
    tokio::spawn(async move {
        let mut window = Window::default();
        loop {
            let yielded = Instant::now();
            tokio::task::yield_now().await;
            let queue = yielded.elapsed();
            // A worker held by one long task shows as a late timer rather than a long queue
            // (tokio's timer ticks in milliseconds, hence the one allowed).
            let slept = Instant::now();
            tokio::time::sleep(EVERY).await;
            let late = slept.elapsed().saturating_sub(EVERY + Duration::from_millis(1));
            lag.micros.store(window.push(queue.max(late)), Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: issue 14 (3): one late wake-up on an idle machine shed requests as overload.
    #[test]
    fn one_late_measurement_does_not_count_and_a_sustained_wait_does() {
        let mut w = Window::default();
        let ms = Duration::from_millis;
        for _ in 0..WINDOW {
            w.push(ms(0));
        }
        assert_eq!(w.push(ms(20)), 0, "a single spike");
        for _ in 0..WINDOW - 1 {
            w.push(ms(3));
        }
        assert_eq!(w.push(ms(3)), 3000, "every measurement of the window waited");
        assert_eq!(w.push(ms(0)), 0, "and it ends as soon as one does not");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn sees_a_busy_worker_and_not_a_single_stall() {
        let lag = Arc::new(Lag::default());
        spawn_probe(lag.clone());
        tokio::time::sleep(Duration::from_millis(30)).await;
        // One stall of the only worker: a late wake-up, not a queue.
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(30)) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(lag.current() < Duration::from_millis(5), "{:?}", lag.current());
        // A queue: the worker is taken 4 ms at a time for 200 ms, and the probe waits behind it.
        let busy = tokio::spawn(async {
            let until = Instant::now() + Duration::from_millis(200);
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(4));
                tokio::task::yield_now().await;
            }
        });
        let mut seen = Duration::ZERO;
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until && !busy.is_finished() {
            seen = seen.max(lag.current());
            tokio::task::yield_now().await;
        }
        busy.await.unwrap();
        assert!(seen >= Duration::from_millis(2), "{seen:?}");
    }
}
