//! The inference pool: a fixed set of OS threads, one per core by default, fed by a bounded
//! queue. Inference is CPU-bound for hundreds of microseconds at a time; running it here keeps
//! tokio's workers free to accept, decode and answer, and the bounded queue turns overload into
//! an immediate refusal instead of an ever-growing backlog.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("the inference queue is full")]
    Full,
    #[error("the inference pool has stopped")]
    Stopped,
    #[error("the inference job panicked")]
    Panicked,
}

pub struct InferencePool {
    /// Dropped on shutdown, which ends each worker's receive loop once the queue drains.
    sender: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl InferencePool {
    pub fn new(threads: usize, capacity: usize) -> InferencePool {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity);
        let workers = (0..threads.max(1))
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("retort-infer-{i}"))
                    .spawn(move || {
                        for job in receiver {
                            // A panicking job drops its reply channel (the caller sees
                            // `Panicked`); the worker lives on for the next request.
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                        }
                    })
                    .expect("cannot start an inference thread")
            })
            .collect();
        InferencePool { sender: Some(sender), workers }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Runs `f` on a pool thread and returns its result with the time it waited in the queue.
    /// Refuses at once when the queue is full.
    pub async fn run<T, F>(&self, f: F) -> Result<(T, Duration), PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let sender = self.sender.as_ref().ok_or(PoolError::Stopped)?;
        let (reply, result) = tokio::sync::oneshot::channel();
        let enqueued = Instant::now();
        let job: Job = Box::new(move || {
            let waited = enqueued.elapsed();
            let _ = reply.send((f(), waited));
        });
        sender.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Full,
            TrySendError::Disconnected(_) => PoolError::Stopped,
        })?;
        result.await.map_err(|_| PoolError::Panicked)
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
    use std::sync::{Arc, Barrier};

    #[tokio::test]
    async fn runs_jobs_off_the_runtime_and_survives_panics() {
        let pool = InferencePool::new(2, 8);
        let (name, _) = pool.run(|| std::thread::current().name().map(str::to_string)).await.unwrap();
        assert!(name.unwrap().starts_with("retort-infer-"));
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert_eq!(err, PoolError::Panicked);
        assert_eq!(pool.run(|| 7).await.unwrap().0, 7);
    }

    #[tokio::test]
    async fn refuses_when_the_queue_is_full() {
        let pool = Arc::new(InferencePool::new(1, 1));
        let gate = Arc::new(Barrier::new(2));
        // Occupy the only thread, then fill the one queue slot.
        let (started, is_started) = tokio::sync::oneshot::channel();
        let g = gate.clone();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    let _ = started.send(());
                    g.wait();
                })
                .await
            }
        });
        is_started.await.unwrap();
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 1).await }
        });
        for _ in 0..200 {
            if pool.queued() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.queued(), 1);
        assert_eq!(pool.run(|| 2).await.unwrap_err(), PoolError::Full);
        gate.wait();
        busy.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap().unwrap().0, 1);
    }
}
