//! The inference pool: a fixed set of OS threads, one per core by default, fed by a bounded
//! queue. Inference is CPU-bound for hundreds of microseconds at a time; running it here keeps
//! tokio's workers free to accept, decode and answer, and the bounded queue turns overload into
//! an immediate refusal instead of an ever-growing backlog. On one core, where the workers and
//! the inference thread share the CPU anyway, a pool made [`InferencePool::inline_when_idle`]
//! runs a request's job on the calling thread while no job runs or waits.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, TrySendError};

use retort_model::engine;

/// How long an idle worker waits before it lets go of retired versions' run states.
const IDLE_CHECK: Duration = Duration::from_millis(250);

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the inference queue is full")]
    Full,
    #[error("the inference pool has stopped")]
    Stopped,
    #[error("the inference job panicked")]
    Panicked,
    #[error("the request's deadline passed while it waited")]
    Expired,
    #[error("the client went away while the request waited")]
    Cancelled,
}

pub struct InferencePool {
    /// Dropped on shutdown, which ends each worker's receive loop once the queue drains.
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    backlog: Arc<Backlog>,
    /// Jobs running now, on a pool thread or inline.
    running: Arc<AtomicUsize>,
    inline: bool,
}

/// How a job got its thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Time in the queue.
    pub waited: Duration,
    /// Run on the caller's thread, the pool being idle.
    pub inline: bool,
}

/// Work admitted and not yet done, as predicted when it was admitted: what a new job waits for.
#[derive(Debug, Default)]
struct Backlog {
    nanos: AtomicU64,
}

/// A job's predicted service time, counted in the backlog from admission until the job is done
/// (or dropped unrun): requests admitted a moment apart see each other's work at once.
pub struct Reservation {
    backlog: Arc<Backlog>,
    nanos: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.backlog.nanos.fetch_sub(self.nanos, Ordering::Relaxed);
    }
}

impl InferencePool {
    pub fn new(threads: usize, capacity: usize) -> InferencePool {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity);
        let backlog = Arc::new(Backlog::default());
        let running = Arc::new(AtomicUsize::new(0));
        let workers = (0..threads.max(1))
            .map(|i| {
                let (receiver, running) = (receiver.clone(), running.clone());
                std::thread::Builder::new()
                    .name(format!("retort-infer-{i}"))
                    .spawn(move || {
                        loop {
                            match receiver.recv_timeout(IDLE_CHECK) {
                                // A panicking job drops its reply channel (the caller sees
                                // `Panicked`); the worker lives on for the next request.
                                Ok(job) => {
                                    running.fetch_add(1, Ordering::Relaxed);
                                    drop(std::panic::catch_unwind(AssertUnwindSafe(job)));
                                    running.fetch_sub(1, Ordering::Relaxed);
                                }
                                // Versions may retire while this thread waits; their run
                                // states (and so their plans) go once it lets them go.
                                Err(RecvTimeoutError::Timeout) => engine::release_retired_states(),
                                Err(RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    })
                    .expect("cannot start an inference thread")
            })
            .collect();
        InferencePool { sender: Some(sender), workers, backlog, running, inline: false }
    }

    /// Lets [`InferencePool::run_until`] run a job on the calling thread when no job runs or
    /// waits: no hand-over, no wait, the caller's cache still warm. For one core, where the
    /// caller could not have done anything else meanwhile.
    pub fn inline_when_idle(mut self, inline: bool) -> InferencePool {
        self.inline = inline;
        self
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Whether a new job would be refused for want of room in the queue.
    pub fn is_full(&self) -> bool {
        self.sender.as_ref().is_none_or(Sender::is_full)
    }

    /// Counts `predicted` in the backlog until the reservation is dropped; pass it to
    /// [`InferencePool::run_until`], whose job drops it when done.
    pub fn reserve(&self, predicted: Duration) -> Reservation {
        let nanos = predicted.as_nanos().min(u64::MAX as u128) as u64;
        self.backlog.nanos.fetch_add(nanos, Ordering::Relaxed);
        Reservation { backlog: self.backlog.clone(), nanos }
    }

    /// How long a job submitted now is expected to wait for a thread: the work reserved ahead
    /// of it, shared among the threads. It counts running jobs whole, erring on the safe side
    /// by up to one job.
    pub fn predicted_wait(&self) -> Duration {
        let threads = self.workers.len().max(1) as u64;
        Duration::from_nanos(self.backlog.nanos.load(Ordering::Relaxed) / threads)
    }

    /// Runs `f` on a pool thread (never inline: for work off the request path) and returns
    /// its result with how it got its thread. Refuses at once when the queue is full.
    pub async fn run<T, F>(&self, f: F) -> Result<(T, Picked), PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.enqueue(None, Arc::new(AtomicBool::new(false)), None, f).await
    }

    /// [`InferencePool::run`] for a request with a deadline: when a thread picks the job up
    /// after `deadline`, or after `cancelled` was set (its client went away), `f` never runs
    /// and the thread moves on to the next job. `reservation` leaves the backlog with the job.
    /// A pool made [`InferencePool::inline_when_idle`] runs `f` here when it is idle.
    pub async fn run_until<T, F>(
        &self,
        deadline: Option<Instant>,
        cancelled: Arc<AtomicBool>,
        reservation: Option<Reservation>,
        f: F,
    ) -> Result<(T, Picked), PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.inline
            && self.sender.is_some()
            && self.queued() == 0
            && self.running.load(Ordering::Relaxed) == 0
        {
            self.running.fetch_add(1, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| attempt(deadline, &cancelled, f)));
            self.running.fetch_sub(1, Ordering::Relaxed);
            drop(reservation);
            let value = outcome.map_err(|_| PoolError::Panicked)??;
            return Ok((value, Picked { waited: Duration::ZERO, inline: true }));
        }
        self.enqueue(deadline, cancelled, reservation, f).await
    }

    async fn enqueue<T, F>(
        &self,
        deadline: Option<Instant>,
        cancelled: Arc<AtomicBool>,
        reservation: Option<Reservation>,
        f: F,
    ) -> Result<(T, Picked), PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let sender = self.sender.as_ref().ok_or(PoolError::Stopped)?;
        let (reply, result) = tokio::sync::oneshot::channel();
        let enqueued = Instant::now();
        let job: Job = Box::new(move || {
            let reservation = reservation;
            let waited = enqueued.elapsed();
            let outcome = attempt(deadline, &cancelled, f).map(|v| (v, Picked { waited, inline: false }));
            // Released before the reply, so that whoever awaits the job sees the backlog without it.
            drop(reservation);
            let _ = reply.send(outcome);
        });
        sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Full,
            TrySendError::Disconnected(_) => PoolError::Stopped,
        })?;
        result.await.map_err(|_| PoolError::Panicked)?
    }
}

/// Runs `f` unless its client went away or its deadline passed before a thread got to it.
fn attempt<T>(
    deadline: Option<Instant>,
    cancelled: &AtomicBool,
    f: impl FnOnce() -> T,
) -> Result<T, PoolError> {
    if cancelled.load(Ordering::Relaxed) {
        Err(PoolError::Cancelled)
    } else if deadline.is_some_and(|d| Instant::now() >= d) {
        Err(PoolError::Expired)
    } else {
        Ok(f())
    }
}

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_survives_panics() {
        let pool = InferencePool::new(2, 8);
        let (name, _) = pool.run(|| std::thread::current().name().map(str::to_string)).await.unwrap();
        assert!(name.unwrap().starts_with("retort-infer-"));
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(err, PoolError::Panicked);
        assert_eq!(pool.run(|| 7).await.unwrap().0, 7);
    }

    type Busy = tokio::task::JoinHandle<Result<((), Picked), PoolError>>;

    /// Occupies the pool's one thread until the returned gate is passed.
    async fn occupy(pool: &Arc<InferencePool>) -> (Arc<Barrier>, Busy) {
        let gate = Arc::new(Barrier::new(2));
        let (started, is_started) = tokio::sync::oneshot::channel();
        let busy = tokio::spawn({
            let (pool, gate) = (pool.clone(), gate.clone());
            async move {
                pool.run(move || {
                    let _ = started.send(());
                    gate.wait();
                })
                .await
            }
        });
        is_started.await.unwrap();
        (gate, busy)
    }

    /// Waits, a second at most, for `n` jobs to be queued.
    async fn until_queued(pool: &InferencePool, n: usize) {
        for _ in 0..200 {
            if pool.queued() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.queued(), n);
    }

    #[tokio::test]
    async fn refuses_when_the_queue_is_full() {
        let pool = Arc::new(InferencePool::new(1, 1));
        // Occupy the only thread, then fill the one queue slot.
        let (gate, busy) = occupy(&pool).await;
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 1).await }
        });
        until_queued(&pool, 1).await;
        assert_eq!(pool.run(|| 2).await.unwrap_err(), PoolError::Full);
        gate.wait();
        busy.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap().0, 1);
    }

    #[tokio::test]
    async fn a_job_past_its_deadline_or_cancelled_never_runs() {
        let pool = InferencePool::new(1, 4);
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (r1, r2) = (ran.clone(), ran.clone());
        // A deadline of now has passed by the time any thread picks the job up: no clock race.
        let expired =
            pool.run_until(Some(Instant::now()), Arc::new(AtomicBool::new(false)), None, move || {
                r1.fetch_add(1, Ordering::Relaxed);
            });
        let cancelled = pool.run_until(None, Arc::new(AtomicBool::new(true)), None, move || {
            r2.fetch_add(1, Ordering::Relaxed);
        });
        let (expired, cancelled) = tokio::join!(expired, cancelled);
        assert_eq!(expired.unwrap_err(), PoolError::Expired);
        assert_eq!(cancelled.unwrap_err(), PoolError::Cancelled);
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        // A deadline still ahead runs.
        let ahead = Some(Instant::now() + Duration::from_secs(3600));
        assert_eq!(pool.run_until(ahead, Arc::new(AtomicBool::new(false)), None, || 5).await.unwrap().0, 5);
    }

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn an_idle_inline_pool_runs_a_request_on_the_calling_thread() {
        let pool = InferencePool::new(1, 4).inline_when_idle(true);
        let never = || Arc::new(AtomicBool::new(false));
        let here = thread_name();
        let (name, picked) = pool.run_until(None, never(), None, thread_name).await.unwrap();
        assert_eq!((name, picked), (here, Picked { waited: Duration::ZERO, inline: true }));
        // Work off the request path never runs inline.
        let (name, picked) = pool.run(thread_name).await.unwrap();
        assert!(name.starts_with("retort-infer-") && !picked.inline, "{name}");
        // The same checks as on a pool thread: past its deadline or cancelled, it never runs;
        // a panic is the job's, not the caller's.
        let reserved = pool.reserve(Duration::from_millis(5));
        let expired = pool.run_until(Some(Instant::now()), never(), Some(reserved), || unreachable!()).await;
        assert_eq!(expired.unwrap_err(), PoolError::Expired);
        assert_eq!(pool.predicted_wait(), Duration::ZERO, "the reservation went with the job");
        let cancelled = pool.run_until(None, Arc::new(AtomicBool::new(true)), None, || unreachable!()).await;
        assert_eq!(cancelled.unwrap_err(), PoolError::Cancelled);
        let panicked = pool.run_until(None, never(), None, || -> u32 { panic!("boom") }).await;
        assert_eq!(panicked.unwrap_err(), PoolError::Panicked);
        assert_eq!(pool.run_until(None, never(), None, || 3).await.unwrap().0, 3);
    }

    #[tokio::test]
    async fn a_busy_inline_pool_queues_requests_behind_the_running_job() {
        let pool = Arc::new(InferencePool::new(1, 4).inline_when_idle(true));
        let (gate, busy) = occupy(&pool).await;
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run_until(None, Arc::new(AtomicBool::new(false)), None, thread_name).await }
        });
        // The request waits for the pool.
        until_queued(&pool, 1).await;
        gate.wait();
        busy.await.unwrap().unwrap();
        let (name, picked) = queued.await.unwrap().unwrap();
        assert!(name.starts_with("retort-infer-") && !picked.inline, "{name}");
    }

    #[tokio::test]
    async fn a_pool_not_made_inline_never_runs_a_job_on_the_caller() {
        let pool = InferencePool::new(1, 4);
        let (name, picked) =
            pool.run_until(None, Arc::new(AtomicBool::new(false)), None, thread_name).await.unwrap();
        assert!(name.starts_with("retort-infer-") && !picked.inline, "{name}");
    }

    #[tokio::test]
    async fn predicts_the_wait_from_the_work_reserved_ahead() {
        let pool = InferencePool::new(2, 8);
        assert_eq!(pool.predicted_wait(), Duration::ZERO);
        let first = pool.reserve(Duration::from_millis(30));
        let second = pool.reserve(Duration::from_millis(10));
        assert_eq!(pool.predicted_wait(), Duration::from_millis(20), "40 ms of work on two threads");
        drop(first);
        assert_eq!(pool.predicted_wait(), Duration::from_millis(5));
        // A job carries its reservation and gives it back once done.
        pool.run_until(None, Arc::new(AtomicBool::new(false)), Some(second), || ()).await.unwrap();
        assert_eq!(pool.predicted_wait(), Duration::ZERO);
    }
}
