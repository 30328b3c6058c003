//! Independent trainings side by side. candle's kernels run on one thread (see `main`), so a
//! comparison of several students uses the machine's cores by training several at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` over `jobs` on up to `workers` threads (the machine's cores when 0), results in the
/// jobs' order. Each job is independent, so the results do not depend on the thread count.
/// The first error is returned once the running jobs finish; jobs not yet started are skipped.
pub fn map<J, R, E, F>(jobs: Vec<J>, workers: usize, f: F) -> Result<Vec<R>, E>
where
    J: Send,
    R: Send,
    E: Send,
    F: Fn(J) -> Result<R, E> + Sync,
{
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(jobs.len())
    .max(1);
    let n = jobs.len();
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<Result<R, E>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let job = jobs[i].lock().expect("not poisoned").take().expect("each job runs once");
                    let r = f(job);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock().expect("not poisoned") = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(n);
    for r in results {
        match r.into_inner().expect("not poisoned") {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_jobs_order_whatever_the_workers() {
        for workers in [1, 2, 5] {
            let out: Vec<u64> = map((0..20u64).collect(), workers, |x| Ok::<_, ()>(x * x)).unwrap();
            assert_eq!(out, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
        }
    }

    #[test]
    fn returns_an_error_of_a_failed_job() {
        let r = map((0..10).collect(), 2, |x| if x == 3 { Err(format!("job {x}")) } else { Ok(x) });
        assert_eq!(r, Err("job 3".to_string()));
    }
}
