//! The writer: request threads hand records to a bounded queue and return at once; one thread
//! of its own turns them into Parquet partitions, rotated by rows and by age. A full queue drops
//! the record and counts its rows, so logging never slows or fails the request that made it.
//! Closing the log (graceful shutdown) writes what is queued and completes the open partition.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::partition;

/// What a log holds: records of one kind, each of one or more rows, batched into Arrow arrays.
pub trait Record: Send + 'static {
    /// Collects records into columns.
    type Batch: Default + Send;
    /// The log's name: its partitions' file prefix and `retort.log`.
    const LOG: &'static str;
    /// The columns with a dictionary (dotted paths for nested ones): those of a few distinct
    /// values. Every other column is written plain: its values are mostly distinct, or repeated
    /// in runs along a request's rows that compression takes anyway, and a dictionary would
    /// cost a hash and a comparison per row for nothing.
    const DICTIONARY: &'static [&'static str];
    fn schema() -> SchemaRef;
    fn rows(&self) -> usize;
    /// When it arrived, in milliseconds since the epoch: what rotation and joins go by.
    fn arrived_ms(&self) -> i64;
    fn append(self, batch: &mut Self::Batch);
    /// The rows appended since the last call, as one record batch of [`Record::schema`].
    fn finish(batch: &mut Self::Batch) -> RecordBatch;
}

/// How a log is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub dir: PathBuf,
    /// Rows the queue holds before new records are dropped: what bounds its memory, since a
    /// record may hold one row or thousands.
    pub queue_rows: u64,
    /// A partition is completed at this many rows…
    pub rotate_rows: u64,
    /// …or this long after its first row arrived, whichever comes first.
    pub rotate_after: Duration,
}

/// Rows of a log by what became of them. `offered - written - dropped` rows are in flight: in
/// the queue or in the open partition, lost only if the process dies before it completes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Rows handed to the log, dropped or not.
    pub offered: AtomicU64,
    /// Rows refused because the queue was full, or lost with a partition that failed to write.
    pub dropped: AtomicU64,
    /// Rows in complete partitions.
    pub written: AtomicU64,
    pub partitions: AtomicU64,
    /// Partitions that failed to write (each named in the server's log).
    pub write_errors: AtomicU64,
    /// Rows in the queue now, not yet taken by the writer.
    waiting: AtomicU64,
}

impl Counters {
    pub fn in_flight(&self) -> u64 {
        let q = self.offered.load(Ordering::Acquire);
        q.saturating_sub(self.written.load(Ordering::Acquire) + self.dropped.load(Ordering::Acquire))
    }
}

/// A running log of `R`.
pub struct Log<R: Record> {
    /// `None` once closed. A read lock per record: uncontended, it is one atomic operation.
    queue: RwLock<Option<Sender<R>>>,
    queue_rows: u64,
    counters: Arc<Counters>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<R: Record> Log<R> {
    /// Starts the writer thread, first removing the unfinished partitions a killed writer left
    /// in `settings.dir` (named in a warning).
    pub fn start(settings: Settings) -> Result<Log<R>, partition::PartitionError> {
        std::fs::create_dir_all(&settings.dir).map_err(|source| partition::PartitionError::Io {
            path: settings.dir.display().to_string(),
            source,
        })?;
        for stale in partition::remove_unfinished(&settings.dir, R::LOG)? {
            tracing::warn!(file = %stale.display(), "removed an unfinished log partition a stopped writer left");
        }
        // Unbounded in records, bounded in rows by `submit`.
        let (queue, records) = crossbeam_channel::unbounded();
        let queue_rows = settings.queue_rows;
        let counters = Arc::new(Counters::default());
        let writer = Writer::<R> {
            settings,
            // Tells this process's partitions from another's writing into the same directory.
            id: retort_model::rng::start_tag(),
            seq: 0,
            batch: R::Batch::default(),
            batched: 0,
            open: None,
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("retort-log-{}", R::LOG))
            .spawn(move || {
                lower_priority();
                writer.run(records)
            })
            .map_err(|source| partition::PartitionError::Io { path: "log writer thread".into(), source })?;
        Ok(Log { queue: RwLock::new(Some(queue)), queue_rows, counters, thread: Mutex::new(Some(thread)) })
    }

    /// Queues `record` unless the queue is full; never blocks. False when it was dropped.
    pub fn submit(&self, record: R) -> bool {
        let rows = record.rows() as u64;
        let c = &self.counters;
        c.offered.fetch_add(rows, Ordering::AcqRel);
        // Rows are reserved before the send and given back if it cannot happen, so the bound
        // holds however many threads submit at once.
        let reserved = c.waiting.fetch_add(rows, Ordering::AcqRel) + rows <= self.queue_rows;
        let queue = self.queue.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let sent = reserved && queue.as_ref().is_some_and(|q| q.send(record).is_ok());
        if !sent {
            c.waiting.fetch_sub(rows, Ordering::AcqRel);
            c.dropped.fetch_add(rows, Ordering::AcqRel);
        }
        sent
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Writes every queued record, completes the open partition and stops the writer.
    pub fn close(&self) {
        self.queue.write().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(log = R::LOG, "the log writer panicked; its open partition is lost");
        }
    }
}

impl<R: Record> Drop for Log<R> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Makes the calling thread run only when its CPU has nothing else to do (Linux `SCHED_IDLE`,
/// per thread): a request thread that wakes preempts it at once. The writer works in bursts (a
/// row group encoded and compressed at once); at normal priority, or even at nice 19, a burst
/// on a core that also answers requests holds those answers back by milliseconds, where the
/// queue can wait for the CPU's idle moments instead.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler reads the parameter it is given; 0 names the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            tracing::warn!("cannot give the log writer idle priority; it competes with requests for the CPU");
        }
    }
}

/// Rows appended to the columns before they are handed to the Parquet writer as one batch.
const BATCH_ROWS: usize = 4096;
/// Row groups are kept small so the open partition's memory stays bounded.
const ROW_GROUP_ROWS: usize = 65_536;

struct Open {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    first_ms: i64,
    last_ms: i64,
    rows: u64,
    opened: Instant,
}

struct Writer<R: Record> {
    settings: Settings,
    id: String,
    seq: u64,
    batch: R::Batch,
    /// Rows in `batch`, not yet in the open partition.
    batched: usize,
    open: Option<Open>,
    counters: Arc<Counters>,
}

impl<R: Record> Writer<R> {
    fn run(mut self, records: Receiver<R>) {
        loop {
            // Rows are batched only into an open partition, so with none there is no deadline.
            let wait = match &self.open {
                Some(open) => self.settings.rotate_after.saturating_sub(open.opened.elapsed()),
                None => Duration::from_secs(3600),
            };
            match records.recv_timeout(wait) {
                Ok(record) => {
                    self.counters.waiting.fetch_sub(record.rows() as u64, Ordering::AcqRel);
                    self.add(record)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.open.as_ref().is_some_and(|o| o.opened.elapsed() >= self.settings.rotate_after) {
                self.complete();
            }
        }
        self.complete();
    }

    fn add(&mut self, record: R) {
        let (rows, at) = (record.rows(), record.arrived_ms());
        if self.open.is_none() {
            self.open = self.open_partition(at);
        }
        let Some(open) = self.open.as_mut() else {
            self.counters.dropped.fetch_add(rows as u64, Ordering::AcqRel);
            return;
        };
        open.first_ms = open.first_ms.min(at);
        open.last_ms = open.last_ms.max(at);
        open.rows += rows as u64;
        record.append(&mut self.batch);
        self.batched += rows;
        if self.batched >= BATCH_ROWS {
            self.flush_batch();
        }
        if self.open.as_ref().is_some_and(|o| o.rows >= self.settings.rotate_rows) {
            self.complete();
        }
    }

    fn open_partition(&mut self, first_ms: i64) -> Option<Open> {
        self.seq += 1;
        let path = partition::path(&self.settings.dir, R::LOG, first_ms, &self.id, self.seq);
        let tmp = partition::temporary(&path);
        let opened = (|| -> Result<ArrowWriter<File>, String> {
            if let Some(day) = path.parent() {
                std::fs::create_dir_all(day).map_err(|e| e.to_string())?;
            }
            let file = File::create(&tmp).map_err(|e| e.to_string())?;
            let mut props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid")))
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .set_dictionary_enabled(false);
            for column in R::DICTIONARY {
                let path = ColumnPath::new(column.split('.').map(str::to_string).collect());
                props = props.set_column_dictionary_enabled(path, true);
            }
            let props = props.build();
            ArrowWriter::try_new(file, R::schema(), Some(props)).map_err(|e| e.to_string())
        })();
        match opened {
            Ok(writer) => {
                Some(Open { writer, tmp, path, first_ms, last_ms: first_ms, rows: 0, opened: Instant::now() })
            }
            Err(error) => {
                self.counters.write_errors.fetch_add(1, Ordering::AcqRel);
                tracing::error!(file = %tmp.display(), %error, "cannot open a log partition; its rows are dropped");
                None
            }
        }
    }

    fn flush_batch(&mut self) {
        if self.batched == 0 {
            return;
        }
        let batch = R::finish(&mut self.batch);
        self.batched = 0;
        let Some(open) = self.open.as_mut() else { return };
        if let Err(error) = open.writer.write(&batch) {
            self.fail(&error.to_string());
        }
    }

    /// Writes the footer, makes the file durable and renames it into place.
    fn complete(&mut self) {
        self.flush_batch();
        let Some(mut open) = self.open.take() else { return };
        let metadata = [
            (partition::KEY_LOG, R::LOG.to_string()),
            (partition::KEY_FORMAT, partition::FORMAT.to_string()),
            (partition::KEY_ROWS, open.rows.to_string()),
            (partition::KEY_FIRST_MS, open.first_ms.to_string()),
            (partition::KEY_LAST_MS, open.last_ms.to_string()),
        ];
        for (key, value) in metadata {
            open.writer.append_key_value_metadata(KeyValue::new(key.to_string(), value));
        }
        let done = (|| -> Result<(), String> {
            let file = open.writer.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            std::fs::rename(&open.tmp, &open.path).map_err(|e| e.to_string())?;
            sync_dir(open.path.parent().unwrap_or(Path::new(".")));
            Ok(())
        })();
        match done {
            Ok(()) => {
                self.counters.written.fetch_add(open.rows, Ordering::AcqRel);
                self.counters.partitions.fetch_add(1, Ordering::AcqRel);
            }
            Err(error) => {
                let _ = std::fs::remove_file(&open.tmp);
                self.counters.write_errors.fetch_add(1, Ordering::AcqRel);
                self.counters.dropped.fetch_add(open.rows, Ordering::AcqRel);
                tracing::error!(file = %open.path.display(), %error, rows = open.rows, "a log partition failed to write; its rows are dropped");
            }
        }
    }

    /// Abandons the open partition after a failed write, counting its rows as dropped.
    fn fail(&mut self, error: &str) {
        if let Some(open) = self.open.take() {
            drop(open.writer);
            let _ = std::fs::remove_file(&open.tmp);
            self.counters.write_errors.fetch_add(1, Ordering::AcqRel);
            self.counters.dropped.fetch_add(open.rows, Ordering::AcqRel);
            tracing::error!(file = %open.path.display(), %error, rows = open.rows, "a log partition failed to write; its rows are dropped");
        }
    }
}

/// The rename is durable only once the directory is.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impression::{self, Impression, Shown};

    /// Request `n`: every second one from a catalog; every third degraded, its last candidate
    /// unscored.
    fn impression(n: usize, arrived_ms: i64, items: usize) -> Impression {
        let degraded = n.is_multiple_of(3);
        Impression {
            request_id: format!("r{n}"),
            arrived_ms,
            model: "ranker".into(),
            version: "3".into(),
            catalog: n.is_multiple_of(2).then(|| ("tracks".to_string(), "7".to_string())),
            context: format!(r#"{{"user_id":"u{n}"}}"#),
            degraded: degraded.then_some("truncated"),
            sample_rate: 0.5,
            heads: Arc::from(vec!["play".to_string(), "skip".to_string()]),
            shown: (0..items)
                .map(|i| Shown {
                    item_id: format!("t{i}"),
                    position: i as u32,
                    score: (i + 1 < items || !degraded).then_some(i as f32 * 0.5),
                    heads: if i + 1 < items || !degraded { vec![0.1 * i as f32, 0.2] } else { Vec::new() },
                    overrides: (i == 0).then(|| r#"{"genre":"jazz"}"#.to_string()),
                })
                .collect(),
        }
    }

    fn settings(dir: &Path, rotate_rows: u64, rotate_after: Duration, queue_rows: u64) -> Settings {
        Settings { dir: dir.to_path_buf(), queue_rows, rotate_rows, rotate_after }
    }

    fn all_rows(dir: &Path) -> Vec<impression::Row> {
        partition::list(dir, "impressions")
            .unwrap()
            .iter()
            .flat_map(|p| impression::read(&p.path).unwrap())
            .collect()
    }

    #[test]
    fn rows_read_back_as_they_were_submitted_and_rotate_by_row_count() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::<Impression>::start(settings(dir.path(), 10, Duration::from_secs(600), 64)).unwrap();
        let sent: Vec<Impression> = (0..9).map(|n| impression(n, 1_764_720_000_000 + n as i64, 4)).collect();
        for i in &sent {
            assert!(log.submit(i.clone()));
        }
        log.close();
        let parts = partition::list(dir.path(), "impressions").unwrap();
        // 36 rows, completed at 12, 24 and 36 rows: a request's rows stay in one partition.
        assert_eq!(parts.iter().map(|p| p.rows).collect::<Vec<_>>(), [12, 12, 12]);
        assert_eq!((parts[0].first_ms, parts[0].last_ms), (1_764_720_000_000, 1_764_720_000_002));
        let rows = all_rows(dir.path());
        assert_eq!(rows.len(), 36);
        let r = &rows[4 * 3 + 3];
        assert_eq!((r.request_id.as_str(), r.item_id.as_str(), r.position), ("r3", "t3", 3));
        assert_eq!((r.score, r.heads.is_empty(), r.degraded.as_deref()), (None, true, Some("truncated")));
        let r = &rows[4 * 4 + 1];
        assert_eq!(r.catalog, Some(("tracks".to_string(), "7".to_string())));
        assert_eq!(r.heads, [("play".to_string(), 0.1), ("skip".to_string(), 0.2)]);
        assert_eq!(
            (r.score, r.overrides.as_deref(), r.context.as_str()),
            (Some(0.5), None, r#"{"user_id":"u4"}"#)
        );
        assert_eq!(rows[0].overrides.as_deref(), Some(r#"{"genre":"jazz"}"#));
        assert_eq!(
            (rows[4].catalog.as_ref(), rows[4].sample_rate, rows[4].ts_ms),
            (None, 0.5, 1_764_720_000_001)
        );
        // A dictionary only for the columns of few values.
        let file = File::open(&parts[0].path).unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(file).unwrap();
        let group = parquet::file::reader::FileReader::metadata(&reader).row_group(0).clone();
        let with_dictionary: Vec<String> = group
            .columns()
            .iter()
            .filter(|c| c.dictionary_page_offset().is_some())
            .map(|c| c.column_path().string())
            .collect();
        assert_eq!(with_dictionary, ["model", "version", "catalog", "catalog_version", "degraded"]);
        let c = log.counters();
        assert_eq!(c.offered.load(Ordering::Acquire), 36);
        assert_eq!(c.written.load(Ordering::Acquire), 36);
        assert_eq!(c.partitions.load(Ordering::Acquire), 3);
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn an_open_partition_is_not_listed_until_its_age_completes_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::<Impression>::start(settings(dir.path(), 1_000_000, Duration::from_millis(300), 64))
            .unwrap();
        log.submit(impression(1, 1_764_720_000_000, 2));
        // Bounded wait for the writer thread to pick the record up and open its partition.
        let deadline = Instant::now() + Duration::from_secs(10);
        let day = partition::path(dir.path(), "impressions", 1_764_720_000_000, "w", 1)
            .parent()
            .unwrap()
            .to_path_buf();
        let unfinished = || {
            std::fs::read_dir(&day)
                .map(|d| d.filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".tmp")).count())
                .unwrap_or(0)
        };
        while unfinished() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(unfinished(), 1, "the writer opened its partition");
        assert_eq!(
            partition::list(dir.path(), "impressions").unwrap(),
            [],
            "an open partition is not listed"
        );
        assert_eq!(log.counters().in_flight(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.counters().partitions.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let parts = partition::list(dir.path(), "impressions").unwrap();
        assert_eq!(parts.len(), 1, "completed by age without a close");
        assert_eq!(parts[0].rows, 2);
        assert_eq!(log.counters().in_flight(), 0);
    }

    #[test]
    fn a_full_queue_drops_records_and_counts_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let log =
            Log::<Impression>::start(settings(dir.path(), 1_000_000, Duration::from_secs(600), 6)).unwrap();
        // Far more rows than the queue holds, sent faster than a thread writes Parquet; a
        // record larger than the whole queue never fits.
        assert!(!log.submit(impression(0, 1_764_720_000_000, 7)));
        let accepted = (0..2000).filter(|&n| log.submit(impression(n, 1_764_720_000_000, 3))).count();
        log.close();
        let c = log.counters();
        let dropped = c.dropped.load(Ordering::Acquire);
        assert!(dropped > 7, "a queue of 6 rows took every one of 2000 records");
        assert_eq!(dropped, (2000 - accepted as u64) * 3 + 7);
        assert_eq!(c.written.load(Ordering::Acquire), accepted as u64 * 3);
        assert_eq!(all_rows(dir.path()).len(), accepted * 3);
        assert!(!log.submit(impression(0, 0, 1)), "a closed log takes nothing");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_thread_runs_only_when_the_cpu_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::<Impression>::start(settings(dir.path(), 100, Duration::from_secs(600), 8)).unwrap();
        // Thread names are cut to 15 bytes in /proc; the policy is field 41 of its stat.
        let policy = || {
            std::fs::read_dir("/proc/self/task").unwrap().find_map(|task| {
                let task = task.unwrap().path();
                let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
                if comm.trim() != "retort-log-impr" {
                    return None;
                }
                let stat = std::fs::read_to_string(task.join("stat")).unwrap();
                // Fields after the command name, which ends at the last ')'.
                let after = &stat[stat.rfind(')').unwrap() + 2..];
                after.split(' ').nth(41 - 3).map(|p| p.parse::<i32>().unwrap())
            })
        };
        // The thread sets its own policy as it starts: a bounded wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while policy() != Some(libc::SCHED_IDLE) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(policy(), Some(libc::SCHED_IDLE));
        log.close();
    }

    #[test]
    fn a_new_writer_removes_what_a_killed_one_left_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let stale =
            partition::temporary(&partition::path(dir.path(), "impressions", 1_764_720_000_000, "dead", 1));
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, b"PAR1 no footer").unwrap();
        let log = Log::<Impression>::start(settings(dir.path(), 100, Duration::from_secs(600), 8)).unwrap();
        assert!(!stale.exists());
        log.submit(impression(1, 1_764_720_000_000, 1));
        log.close();
        assert_eq!(all_rows(dir.path()).len(), 1);
    }
}
