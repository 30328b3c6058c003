//! Which feedback events count for which impression. An event counts for the candidate its
//! request id and item id name when the server received it within the window after the
//! impression: `ts_ms ≤ received_ms ≤ ts_ms + window`. Identical events (a client's retried
//! batch) count once. What does not count is counted, by why.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::join::config::JoinTask;
use retort_log::feedback::Event;
use retort_model::manifest::HeadKind;

/// What makes two events the same event: a client's retried batch repeats all of it.
pub type Identity<'e> = (&'e str, &'e str, &'e str, i64, Option<u64>);

pub fn identity(e: &Event) -> Identity<'_> {
    (&e.request_id, &e.item_id, &e.event, e.ts_ms, e.value.map(f64::to_bits))
}

/// One shown candidate, as the join sees it.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    pub request_id: &'a str,
    pub item_id: &'a str,
    pub ts_ms: i64,
}

/// What happened to the events naming a request that the impressions hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Counted towards a label.
    pub attributed: u64,
    /// Received after the impression's window closed.
    pub late: u64,
    /// Received before the impression (replicas whose clocks disagree).
    pub early: u64,
    /// The same event again (request, item, type, time and value), counted once.
    pub duplicates: u64,
    /// Of a type no task maps.
    pub unmapped: u64,
    /// Naming an item its request did not show (or showed below the logged top).
    pub unshown: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.attributed += o.attributed;
        self.late += o.late;
        self.early += o.early;
        self.duplicates += o.duplicates;
        self.unmapped += o.unmapped;
        self.unshown += o.unshown;
    }
}

/// Per task (in the config's order), one label per shown row; and the counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribution {
    pub labels: Vec<Vec<f64>>,
    pub counts: Counts,
}

/// Labels `shown` from `events` (each with the time the server received it). Events naming a
/// request that `shown` lacks are left alone: they are another partition's, or unknown.
pub fn attribute(
    tasks: &[JoinTask],
    window_ms: i64,
    shown: &[Shown<'_>],
    events: &[(Event, i64)],
) -> Attribution {
    let rows: HashMap<(&str, &str), usize> =
        shown.iter().enumerate().map(|(i, s)| ((s.request_id, s.item_id), i)).collect();
    let requests: HashSet<&str> = shown.iter().map(|s| s.request_id).collect();
    let mut by_event: HashMap<&str, Vec<usize>> = HashMap::new();
    for (t, task) in tasks.iter().enumerate() {
        for e in &task.events {
            by_event.entry(e.as_str()).or_default().push(t);
        }
    }
    // The order events are applied in decides which of two duplicates counts and the order of
    // a regression's sum: by the time received, then by the event, so reruns agree bit for bit.
    let mut ours: Vec<&(Event, i64)> =
        events.iter().filter(|(e, _)| requests.contains(e.request_id.as_str())).collect();
    ours.sort_by(|(a, ra), (b, rb)| {
        (ra, &a.request_id, &a.item_id, &a.event, a.ts_ms)
            .cmp(&(rb, &b.request_id, &b.item_id, &b.event, b.ts_ms))
            .then(a.value.map(f64::to_bits).cmp(&b.value.map(f64::to_bits)))
    });
    let mut labels = vec![vec![0.0; shown.len()]; tasks.len()];
    let mut counts = Counts::default();
    let mut seen = HashSet::new();
    for (event, received_ms) in ours {
        if !seen.insert(identity(event)) {
            counts.duplicates += 1;
            continue;
        }
        let Some(&row) = rows.get(&(event.request_id.as_str(), event.item_id.as_str())) else {
            counts.unshown += 1;
            continue;
        };
        let Some(mapped) = by_event.get(event.event.as_str()) else {
            counts.unmapped += 1;
            continue;
        };
        let ts = shown[row].ts_ms;
        if *received_ms < ts {
            counts.early += 1;
            continue;
        }
        if *received_ms > ts.saturating_add(window_ms) {
            counts.late += 1;
            continue;
        }
        counts.attributed += 1;
        for &t in mapped {
            let label = &mut labels[t][row];
            match tasks[t].kind {
                HeadKind::Binary => *label = 1.0,
                HeadKind::Regression => *label += event.value.unwrap_or(1.0),
            }
        }
    }
    Attribution { labels, counts }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, kind: HeadKind, events: &[&str]) -> JoinTask {
        JoinTask { name: name.into(), kind, events: events.iter().map(|e| e.to_string()).collect() }
    }

    fn event(request: &str, item: &str, kind: &str, value: Option<f64>, received: i64) -> (Event, i64) {
        let e = Event {
            request_id: request.into(),
            item_id: item.into(),
            event: kind.into(),
            ts_ms: received - 5,
            value,
        };
        (e, received)
    }

    #[test]
    fn events_count_inside_the_window_edges_included_and_once_each() {
        let tasks = [
            task("play", HeadKind::Binary, &["play", "complete"]),
            task("seconds", HeadKind::Regression, &["listen"]),
            task("done", HeadKind::Binary, &["complete"]),
        ];
        let shown = [
            Shown { request_id: "r1", item_id: "a", ts_ms: 1_000 },
            Shown { request_id: "r1", item_id: "b", ts_ms: 1_000 },
            Shown { request_id: "r2", item_id: "a", ts_ms: 5_000 },
        ];
        let window = 100;
        let retried = event("r1", "b", "listen", Some(30.0), 1_050);
        let events = vec![
            event("r1", "a", "play", None, 1_000), // at the impression: counts
            event("r1", "b", "listen", Some(12.5), 1_100), // at the window's end: counts
            retried.clone(),
            retried,                                   // a retried batch: once
            event("r1", "b", "listen", None, 1_060),   // no value: counts 1
            event("r2", "a", "complete", None, 5_101), // one past the window: late
            event("r2", "a", "play", None, 4_999),     // before the impression: early
            event("r2", "a", "share", None, 5_010),    // no task maps it
            event("r2", "z", "play", None, 5_010),     // not shown in r2
            event("r9", "a", "play", None, 5_010),     // another partition's request
            event("r2", "a", "complete", None, 5_020), // counts for two tasks
        ];
        let a = attribute(&tasks, window, &shown, &events);
        assert_eq!(a.labels[0], vec![1.0, 0.0, 1.0]);
        assert_eq!(a.labels[1], vec![0.0, 12.5 + 30.0 + 1.0, 0.0]);
        assert_eq!(a.labels[2], vec![0.0, 0.0, 1.0]);
        let want = Counts { attributed: 5, late: 1, early: 1, duplicates: 1, unmapped: 1, unshown: 1 };
        assert_eq!(a.counts, want);

        // The order events come in changes nothing.
        let mut reversed = events.clone();
        reversed.reverse();
        assert_eq!(attribute(&tasks, window, &shown, &reversed), a);
    }
}
