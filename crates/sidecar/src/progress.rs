//! Progress of a long step (training, labelling): a line redrawn in place on a terminal, and
//! where stderr is a log (a pipe, a file, a CI job), a log line every [`LOG_EVERY`] with the
//! rate and the time left, so a long run is never silent. And the wait between a `--follow`
//! loop's polls.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often a log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the terminal line is redrawn, at most.
const DRAW_EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    /// What is being done (`training`, `labelling`).
    what: &'static str,
    /// What is counted (`steps`, `rows`).
    unit: &'static str,
    total: Option<usize>,
    done: AtomicUsize,
    started: Instant,
    terminal: bool,
    enabled: bool,
    /// When the line was last drawn or logged.
    last: Mutex<Instant>,
}

impl Progress {
    /// Progress of `what`, counting `unit`s out of `total` when it is known; silent unless
    /// `enabled`.
    pub fn new(what: &'static str, unit: &'static str, total: Option<usize>, enabled: bool) -> Progress {
        let started = Instant::now();
        Progress {
            what,
            unit,
            total,
            done: AtomicUsize::new(0),
            started,
            terminal: std::io::stderr().is_terminal(),
            enabled,
            last: Mutex::new(started),
        }
    }

    /// Counts `n` more units done; `detail` (called only when a line is written) adds to it.
    pub fn add(&self, n: usize, detail: impl FnOnce() -> String) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if !self.enabled {
            return;
        }
        let every = if self.terminal { DRAW_EVERY } else { LOG_EVERY };
        {
            let mut last = self.last.lock().expect("never poisoned");
            if last.elapsed() < every {
                return;
            }
            *last = Instant::now();
        }
        let line = self.line(done, &detail());
        if self.terminal {
            eprint!("\r\x1b[K{line}");
        } else {
            tracing::info!("{line}");
        }
    }

    /// Clears the terminal line.
    pub fn finish(&self) {
        if self.enabled && self.terminal {
            eprint!("\r\x1b[K");
        }
    }

    fn line(&self, done: usize, detail: &str) -> String {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / elapsed;
        let mut line = format!("{}: {done}", self.what);
        if let Some(total) = self.total {
            line += &format!("/{total}");
        }
        line += &format!(" {} ({rate:.0}/s", self.unit);
        if let Some(total) = self.total.filter(|_| rate > 0.0) {
            line += &format!(", {} left", eta(total.saturating_sub(done) as f64 / rate));
        }
        line.push(')');
        if !detail.is_empty() {
            line += &format!(", {detail}");
        }
        line
    }
}

/// `1h02m`, `3m05s`, `12s`.
fn eta(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A `--follow` loop's wait between polls: `total`, cut short within 50 ms once `stop` is set.
pub fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) {
    let until = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_how_far_how_fast_and_how_long_is_left() {
        let p = Progress::new("training", "steps", Some(1000), true);
        let line = p.line(250, "epoch 1/4, loss 0.5000");
        assert!(line.starts_with("training: 250/1000 steps ("), "{line}");
        assert!(line.contains(" left), epoch 1/4, loss 0.5000"), "{line}");
        assert_eq!(Progress::new("labelling", "rows", None, true).line(0, ""), "labelling: 0 rows (0/s)");
        assert_eq!((eta(12.4), eta(185.0), eta(3720.0)), ("12s".into(), "3m05s".into(), "1h02m".into()));
    }
}
