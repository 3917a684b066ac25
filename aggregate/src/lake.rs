//! The Parquet lake and its exactly-once commit protocol (ARCHITECTURE.md, "Delivery invariant").
//!
//! A batch is a contiguous offset range `[first, last]` of one Kafka partition. Committing it:
//! 1. write every file of the batch (raw events and rollups, one of each per UTC date) into the
//!    partition's staging directory `_staging/{topic}/p{N}/` (outside the table directories, so
//!    no reader that lists them can see it), and fsync it;
//! 2. record the batch as `pending` in the partition's state file (write temp, fsync, rename,
//!    fsync the directory) — the intent;
//! 3. rename each staged file to its final name and fsync its directory;
//! 4. record `committed_through = last`, `pending = none` in the state file — the commit.
//!
//! Recovery ([`Lake::recover`]) runs before a partition is consumed: a pending batch is rolled
//! forward (its files were all fsynced before the intent, so each exists under one name or the
//! other), then the partition's staging directory — files of a batch that never reached its
//! intent — is emptied. Consumption resumes at `committed_through + 1`, so a committed batch is
//! never written again and an uncommitted one leaves nothing behind. Recovery touches only the
//! state file, the pending batch's files and the staging directory: its cost does not grow with
//! the lake.
//!
//! Fencing: only the holder of a partition's [`PartitionLock`] (an exclusive `flock` on
//! `_state/{topic}/p{N}.lock`) may recover or commit that partition; both take the lock as a
//! proof argument. The kernel releases the lock when its holder exits, even by SIGKILL, so a
//! crashed owner never blocks its successor, while a live but stalled one (a "zombie" the
//! consumer group has already replaced) keeps its successor waiting instead of racing it.
//! `flock` is exclusive across processes on one host's local file system; see ARCHITECTURE.md
//! for the limits (no NFS).
//!
//! Also here: reading back the dedupe keys of committed raw events ([`Lake::load_keys`]), and
//! for budgets the partition's alert ledger ([`Lake::ledger`], [`Lake::write_ledger`], written
//! atomically like the commit state) and its committed events ([`Lake::committed_event_files`],
//! [`Lake::read_spend_events`]).
//!
//! Not here: Kafka (the caller supplies offsets) and the dedupe index itself ([`crate::dedupe`]).

use crate::budgets::{Ledger, SpendEvent};
use crate::dedupe::{self, Key};
use crate::record::{CONTENT_COLUMNS, PricedEvent, StoredContent, events_batch, rollup_batch};
use crate::rollup::{self, fold};
use crate::{Error, Result};
use arrow::datatypes::DataType;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenmeter_schemas::layout::{
    self, EVENTS_DIR, FileId, PartitionState, PendingBatch, ROLLUPS_DIR, TMP_SUFFIX,
};

/// A point in the commit protocol (or in the alert protocol that follows it) where a test can
/// make the process fail as if it crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// Files written and fsynced under temporary names; no intent yet.
    BeforeIntent,
    /// The first file of the batch written to staging, the others not yet.
    MidWrite,
    /// Intent recorded; no file renamed yet.
    AfterIntent,
    /// Intent recorded; the first file renamed, the others not.
    MidRename,
    /// Batch committed in the lake; Kafka offsets not yet committed (the caller's next step).
    AfterCommit,
    /// A budget alert recorded in the ledger (intent), not yet produced to the alerts topic.
    AlertAfterIntent,
    /// A budget alert acknowledged by the alerts topic, its ledger entry not yet updated.
    AlertAfterSend,
    /// A webhook answered 2xx for an alert, its ledger entry not yet updated.
    WebhookAfterPost,
}

impl std::str::FromStr for FailPoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "mid_write" => FailPoint::MidWrite,
            "before_intent" => FailPoint::BeforeIntent,
            "after_intent" => FailPoint::AfterIntent,
            "mid_rename" => FailPoint::MidRename,
            "after_commit" => FailPoint::AfterCommit,
            "alert_after_intent" => FailPoint::AlertAfterIntent,
            "alert_after_send" => FailPoint::AlertAfterSend,
            "webhook_after_post" => FailPoint::WebhookAfterPost,
            _ => {
                return Err(format!(
                    "unknown fail point {s:?}: mid_write|before_intent|after_intent|mid_rename|after_commit|alert_after_intent|alert_after_send|webhook_after_post"
                ));
            }
        })
    }
}

/// Act on a fail point: when `configured` is `at` on its `n`th occurrence, fail as `action`
/// says (an error, or SIGKILL of this process on the spot).
pub fn trip(
    configured: Option<(FailPoint, u64)>,
    action: FailAction,
    at: FailPoint,
    n: u64,
) -> Result<()> {
    match configured {
        Some((p, k)) if p == at && k == n => match action {
            FailAction::Error => Err(Error::FailPoint(at)),
            FailAction::Kill => {
                tracing::warn!(?at, n, "fail point reached: SIGKILL");
                // SAFETY: kill(2) and getpid(2) take plain integers and touch no memory of
                // this process; the signal ends it.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                unreachable!("SIGKILL returned")
            }
        },
        _ => Ok(()),
    }
}

/// How the lake compresses a table's pages: raw events with zstd (the record of what was
/// billed, kept for years: size first), rollups with LZ4 (`LZ4_RAW`: the tables dashboards and
/// month reports read again and again: speed first). In the bench (200k events), LZ4 rollups
/// are 1.5x the bytes of zstd ones, and the reports from them take 17–43 % less time:
/// decompression is cheaper, and parquet-rs builds no codec context for LZ4 (zstd runs `cpuid`,
/// a VM exit, for each context it creates, and parquet-rs creates two per column chunk read or
/// written; see BENCHMARKS.md).
pub fn table_compression(table_dir: &str, zstd_level: i32) -> Compression {
    if table_dir == ROLLUPS_DIR {
        Compression::LZ4_RAW
    } else {
        Compression::ZSTD(ZstdLevel::try_new(zstd_level).unwrap_or_default())
    }
}

/// Rows per data page in rollup files (parquet-rs's default is 20,000 for every table). A
/// one-tenant query (dashboards, the tenant-month report) reads only the pages whose statistics
/// can hold its tenant, so smaller pages mean fewer other tenants' rows decoded. Measured on the
/// bench's 10M compacted lake (31 rollup files of about 108,000 rows; the busiest tenant has
/// about 1,450 rows a day): rows decoded 614,400 → 67,600, scan time 120–164 → 43–64 ms;
/// the all-tenant month from rollups within noise (1.00–1.09 → 1.06–1.12 s); rollup bytes
/// +10 %. 4,096 rows scanned 52–77 ms, 1,024 rows 73–116 ms (more pages to evaluate). Raw events
/// keep the default: size first, and their reports read every tenant.
pub const ROLLUP_PAGE_ROWS: usize = 2048;

/// How the lake encodes a column in Parquet (compressed on top: [`table_compression`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnEncoding {
    /// Dictionary with RLE indices: strings that repeat (tenants, models, agents, hours).
    Dictionary,
    /// Plain values: columns where most values differ (event ids, latencies,
    /// token counts, money). A dictionary as large as the column plus its indices compresses
    /// worse than the values themselves (the bench's raw events: 0.119 → 0.107 of the JSON
    /// bytes; DuckDB's writer makes the same choice).
    Plain,
    /// `DELTA_BINARY_PACKED`: integers that rise within a file (event times, offsets), whose
    /// deltas are small. DuckDB reads it; it does not read `BYTE_STREAM_SPLIT` on 16-byte
    /// decimals, so money stays plain.
    Delta,
}

/// The encoding of the lake's column `name` of type `dt` (raw events and rollups).
pub fn column_encoding(name: &str, dt: &DataType) -> ColumnEncoding {
    match (name, dt) {
        ("event_time", DataType::Timestamp(..)) | ("kafka_offset", DataType::Int64) => {
            ColumnEncoding::Delta
        }
        ("event_id", _) | (_, DataType::Int64 | DataType::Decimal128(..)) => ColumnEncoding::Plain,
        _ => ColumnEncoding::Dictionary,
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct LakeOptions {
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the raw-event files (rollups are LZ4: [`table_compression`]).
    pub zstd_level: i32,
    /// Fail (as if crashed) at this point of the Nth batch commit (1-based) of this process.
    pub fail_point: Option<(FailPoint, u64)>,
    /// What reaching the fail point does.
    pub fail_action: FailAction,
}

/// What a reached [`FailPoint`] does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailAction {
    /// Return [`Error::FailPoint`] (in-process tests).
    #[default]
    Error,
    /// SIGKILL this process on the spot: nothing after the point runs, not even destructors
    /// (crash tests of the binary).
    Kill,
}

impl Default for LakeOptions {
    fn default() -> Self {
        Self {
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            fail_point: None,
            fail_action: FailAction::Error,
        }
    }
}

/// What one committed batch wrote.
#[derive(Debug, Clone, Default)]
pub struct CommitReport {
    pub events: usize,
    pub rollup_rows: usize,
    pub files: Vec<String>,
    pub bytes: u64,
}

/// Exclusive ownership of one Kafka partition's slice of the lake, by this process, for as long
/// as the value lives: an exclusive `flock` on `_state/{topic}/p{N}.lock`. [`Lake::recover`] and
/// [`Lake::commit`] require it.
#[derive(Debug)]
pub struct PartitionLock {
    file: File,
    topic: String,
    partition: i32,
}

impl PartitionLock {
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn partition(&self) -> i32 {
        self.partition
    }
}

impl Drop for PartitionLock {
    fn drop(&mut self) {
        // Empty the holder note first: a lock file that names a pid is held by it.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The lake rooted at a directory.
#[derive(Debug)]
pub struct Lake {
    root: PathBuf,
    opts: LakeOptions,
    commits: std::sync::atomic::AtomicU64,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

fn tmp_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Move a staged file to its final name (same file system: an atomic rename).
fn publish(staged: &Path, fin: &Path) -> Result<()> {
    let dir = fin.parent().expect("file has a parent");
    fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    fs::rename(staged, fin).map_err(Error::io("rename", fin))
}

/// Replace the file at `path` with `bytes` atomically: write a temporary file, fsync it, rename
/// it over `path`, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("state path has a parent");
    fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
    let tmp = tmp_of(path);
    let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    fsync_dir(dir)
}

/// The staging directory of one partition.
fn staging_dir(root: &Path, topic: &str, partition: i32) -> PathBuf {
    root.join(layout::staging_path(topic, partition))
}

/// Where the final file at `rel` (relative to the root) is staged.
fn staged(root: &Path, topic: &str, partition: i32, rel: &str) -> PathBuf {
    tmp_of(&staging_dir(root, topic, partition).join(rel))
}

/// Write `batch` as a Parquet file at `path` atomically, with the lake's default settings:
/// a temp file next to it (`*.tmp`, which no reader lists), fsync, rename, fsync the directory.
/// For files outside the per-partition commit protocol (restatements), which are published by
/// a record written after them.
pub fn write_file_atomic(
    path: &Path,
    table_dir: &str,
    batch: &arrow::array::RecordBatch,
) -> Result<()> {
    let lake = Lake {
        root: path.parent().expect("file has a parent").to_path_buf(),
        opts: LakeOptions::default(),
        commits: std::sync::atomic::AtomicU64::new(0),
    };
    let tmp = tmp_of(path);
    lake.write_parquet(&tmp, table_dir, batch)?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    fsync_dir(path.parent().expect("file has a parent"))
}

impl Lake {
    /// Open (creating if needed) the lake at `root`.
    pub fn open(root: impl Into<PathBuf>, opts: LakeOptions) -> Result<Self> {
        let root = root.into();
        for d in [EVENTS_DIR, ROLLUPS_DIR, layout::STATE_DIR] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(Error::io("create directory", &p))?;
        }
        Ok(Self {
            root,
            opts,
            commits: Default::default(),
        })
    }

    /// The lake's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_file(&self, topic: &str, partition: i32) -> PathBuf {
        self.root.join(layout::lock_path(topic, partition))
    }

    /// Take the partition's lock if no other holder has it; `None` if one has (see
    /// [`Lake::lock_holder`] for who). Lock files are never deleted: deleting one while a
    /// process holds it would let a second process lock a new file of the same name.
    pub fn try_lock(&self, topic: &str, partition: i32) -> Result<Option<PartitionLock>> {
        let path = self.lock_file(topic, partition);
        let dir = path.parent().expect("lock path has a parent");
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &path)(e)),
        }
        // Who holds it, for the log of a process that has to wait (advisory text only).
        let who = format!(
            "pid {} since {}\n",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        let _ = file.set_len(0).and_then(|_| {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(0))?;
            file.write_all(who.as_bytes())
        });
        Ok(Some(PartitionLock {
            file,
            topic: topic.to_string(),
            partition,
        }))
    }

    /// Who holds the partition's lock (`pid N since TIME`; empty when nobody), for messages.
    pub fn lock_holder(&self, topic: &str, partition: i32) -> String {
        fs::read_to_string(self.lock_file(topic, partition))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    fn state_file(&self, topic: &str, partition: i32) -> PathBuf {
        self.root.join(layout::state_path(topic, partition))
    }

    /// Read a partition's commit state; a fresh state if it has none.
    pub fn state(&self, topic: &str, partition: i32) -> Result<PartitionState> {
        let path = self.state_file(topic, partition);
        match fs::read(&path) {
            Ok(bytes) => {
                let s: PartitionState =
                    serde_json::from_slice(&bytes).map_err(|e| Error::State {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if s.version != 1 || s.topic != topic || s.partition != partition {
                    return Err(Error::State {
                        path,
                        message: format!(
                            "expected version 1 of {topic}/{partition}, found version {} of {}/{}",
                            s.version, s.topic, s.partition
                        ),
                    });
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PartitionState {
                version: 1,
                topic: topic.to_string(),
                partition,
                committed_through: -1,
                pending: None,
            }),
            Err(e) => Err(Error::io("read", path)(e)),
        }
    }

    fn write_state(&self, s: &PartitionState) -> Result<()> {
        let path = self.state_file(&s.topic, s.partition);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(s).expect("state serializes"),
        )
    }

    /// Make the partition's files agree with its state and return the offset to resume from
    /// (`committed_through + 1`, or 0). Idempotent; run before consuming the partition.
    pub fn recover(&self, lock: &PartitionLock) -> Result<i64> {
        let (topic, partition) = (lock.topic(), lock.partition());
        let mut state = self.state(topic, partition)?;
        if let Some(p) = state.pending.take() {
            for rel in &p.files {
                let fin = self.root.join(rel);
                let tmp = staged(&self.root, topic, partition, rel);
                if tmp.exists() {
                    publish(&tmp, &fin)?;
                    fsync_dir(fin.parent().expect("file has a parent"))?;
                } else if !fin.exists() {
                    return Err(Error::State {
                        path: self.state_file(topic, partition),
                        message: format!(
                            "pending batch {}..={} names {rel}, which is neither at its final nor its staged name; the lake was modified by hand",
                            p.first, p.last
                        ),
                    });
                }
            }
            tracing::info!(
                topic,
                partition,
                first = p.first,
                last = p.last,
                "rolled a pending batch forward"
            );
            state.committed_through = p.last;
            self.write_state(&state)?;
        }
        // Whatever is still staged belongs to a batch that never reached its intent.
        let staging = staging_dir(&self.root, topic, partition);
        if staging.exists() {
            tracing::info!(dir = %staging.display(), "deleting the staged files of an uncommitted batch");
            fs::remove_dir_all(&staging).map_err(Error::io("delete", &staging))?;
        }
        Ok(state.committed_through + 1)
    }

    fn fail(&self, at: FailPoint, n: u64) -> Result<()> {
        trip(self.opts.fail_point, self.opts.fail_action, at, n)
    }

    /// Write `batch`, a file of table `table_dir` (`EVENTS_DIR` or `ROLLUPS_DIR`), as Parquet at
    /// `tmp` and fsync it.
    fn write_parquet(
        &self,
        tmp: &Path,
        table_dir: &str,
        batch: &arrow::array::RecordBatch,
    ) -> Result<u64> {
        let dir = tmp.parent().expect("file has a parent");
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        let file = File::create(tmp).map_err(Error::io("create", tmp))?;
        let mut props = WriterProperties::builder()
            .set_compression(table_compression(table_dir, self.opts.zstd_level))
            .set_max_row_group_row_count(Some(self.opts.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page);
        if table_dir == ROLLUPS_DIR {
            props = props.set_data_page_row_count_limit(ROLLUP_PAGE_ROWS);
        }
        for field in batch.schema().fields() {
            let col = ColumnPath::from(field.name().as_str());
            props = match column_encoding(field.name(), field.data_type()) {
                ColumnEncoding::Dictionary => props,
                ColumnEncoding::Plain => props.set_column_dictionary_enabled(col, false),
                ColumnEncoding::Delta => props
                    .set_column_dictionary_enabled(col.clone(), false)
                    .set_column_encoding(col, Encoding::DELTA_BINARY_PACKED),
            };
        }
        let props = props.build();
        let enc = |e: parquet::errors::ParquetError| Error::Encode {
            what: "parquet",
            message: e.to_string(),
        };
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(enc)?;
        w.write(batch).map_err(enc)?;
        let file = w.into_inner().map_err(enc)?;
        file.sync_all().map_err(Error::io("fsync", tmp))?;
        Ok(file.metadata().map(|m| m.len()).unwrap_or(0))
    }

    /// Commit the batch `[first, last]` of `topic`/`partition`, holding `events` (the valid
    /// ones; offsets of invalid messages are covered by the range). Must be called in offset
    /// order with `first` = the previous `last + 1` (or the offset [`Lake::recover`] returned).
    pub fn commit(
        &self,
        lock: &PartitionLock,
        first: i64,
        last: i64,
        events: &[PricedEvent],
    ) -> Result<CommitReport> {
        let (topic, partition) = (lock.topic(), lock.partition());
        let n = self
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let state = self.state(topic, partition)?;
        if state.pending.is_some() || first <= state.committed_through || first > last {
            return Err(Error::State {
                path: self.state_file(topic, partition),
                message: format!(
                    "batch {first}..={last} does not follow committed offset {} (pending: {:?}); run recovery first",
                    state.committed_through, state.pending
                ),
            });
        }
        let id = FileId {
            topic: topic.to_string(),
            partition,
            first,
            last,
        };
        let name = id.file_name();
        let mut by_date: BTreeMap<chrono::NaiveDate, Vec<&PricedEvent>> = BTreeMap::new();
        for e in events {
            by_date.entry(e.time.date_naive()).or_default().push(e);
        }
        let mut report = CommitReport {
            events: events.len(),
            ..Default::default()
        };
        for (date, evs) in &by_date {
            let rel = format!("{}/{name}", layout::date_dir(EVENTS_DIR, *date));
            let tmp = staged(&self.root, topic, partition, &rel);
            report.bytes += self.write_parquet(&tmp, EVENTS_DIR, &events_batch(topic, evs)?)?;
            report.files.push(rel);
            if report.files.len() == 1 {
                self.fail(FailPoint::MidWrite, n)?;
            }
            let rows = fold(evs.iter().copied());
            let rows = rollup::by_tenant(&rows);
            report.rollup_rows += rows.len();
            let rel = format!("{}/{name}", layout::date_dir(ROLLUPS_DIR, *date));
            let tmp = staged(&self.root, topic, partition, &rel);
            report.bytes += self.write_parquet(&tmp, ROLLUPS_DIR, &rollup_batch(&rows)?)?;
            report.files.push(rel);
        }
        self.fail(FailPoint::BeforeIntent, n)?;
        let mut state = state;
        state.pending = Some(PendingBatch {
            first,
            last,
            files: report.files.clone(),
        });
        self.write_state(&state)?;
        self.fail(FailPoint::AfterIntent, n)?;
        let mut dirs = std::collections::BTreeSet::new();
        for (i, rel) in report.files.iter().enumerate() {
            let fin = self.root.join(rel);
            publish(&staged(&self.root, topic, partition, rel), &fin)?;
            dirs.insert(fin.parent().expect("file has a parent").to_path_buf());
            if i == 0 {
                self.fail(FailPoint::MidRename, n)?;
            }
        }
        for d in &dirs {
            fsync_dir(d)?;
        }
        state.pending = None;
        state.committed_through = last;
        self.write_state(&state)?;
        self.fail(FailPoint::AfterCommit, n)?;
        Ok(report)
    }

    /// The dedupe keys and content fingerprints of the partition's committed raw events of one
    /// UTC date (files whose `last` offset ≤ `committed_through`). Reads the content columns
    /// ([`crate::record::CONTENT_COLUMNS`]) of the date's files of this partition only, and
    /// recomputes each fingerprint from them: the lake does not store it.
    pub fn load_keys(
        &self,
        lock: &PartitionLock,
        date: chrono::NaiveDate,
        committed_through: i64,
    ) -> Result<Vec<(Key, u64)>> {
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let dir = self.root.join(layout::date_dir(EVENTS_DIR, date));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(FileId::parse) else {
                continue;
            };
            if id.topic != lock.topic()
                || id.partition != lock.partition()
                || id.last > committed_through
            {
                continue;
            }
            let path = entry.path();
            let dec = |e: parquet::errors::ParquetError| Error::Encode {
                what: "dedupe keys (reading parquet)",
                message: format!("{}: {e}", path.display()),
            };
            let file = File::open(&path).map_err(Error::io("open", &path))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(dec)?;
            // A column the file lacks is left out here and named by `StoredContent::new`.
            let mask = ProjectionMask::columns(builder.parquet_schema(), CONTENT_COLUMNS);
            let reader = builder.with_projection(mask).build().map_err(dec)?;
            for batch in reader {
                let batch = batch.map_err(|e| Error::Encode {
                    what: "dedupe keys (reading parquet)",
                    message: format!("{}: {e}", path.display()),
                })?;
                let stored = StoredContent::new(&batch).map_err(|e| Error::Encode {
                    what: "dedupe keys (reading parquet)",
                    message: format!("{}: {e}", path.display()),
                })?;
                out.reserve(batch.num_rows());
                for i in 0..batch.num_rows() {
                    let c = stored.content(i);
                    out.push((dedupe::key(c.source, c.id), c.fingerprint()));
                }
            }
        }
        Ok(out)
    }

    fn ledger_file(&self, topic: &str, partition: i32) -> PathBuf {
        self.root.join(layout::alert_ledger_path(topic, partition))
    }

    /// The partition's budget alert ledger, `None` if it has none yet.
    pub fn ledger(&self, lock: &PartitionLock) -> Result<Option<Ledger>> {
        let (topic, partition) = (lock.topic(), lock.partition());
        let path = self.ledger_file(topic, partition);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        let l: Ledger = serde_json::from_slice(&bytes).map_err(|e| Error::State {
            path: path.clone(),
            message: format!("the alert ledger cannot be read ({e}); restore it from a backup, or delete it to evaluate budgets from the lake's committed offset on (alerts already sent this month would be sent again)"),
        })?;
        if l.version != 1 || l.topic != topic || l.partition != partition {
            return Err(Error::State {
                path,
                message: format!(
                    "expected an alert ledger version 1 of {topic}/{partition}, found version {} of {}/{}",
                    l.version, l.topic, l.partition
                ),
            });
        }
        Ok(Some(l))
    }

    /// Write the partition's alert ledger atomically (temp, fsync, rename, fsync directory).
    pub fn write_ledger(&self, lock: &PartitionLock, l: &Ledger) -> Result<()> {
        assert!(
            l.topic == lock.topic() && l.partition == lock.partition(),
            "a ledger is written under its own partition's lock"
        );
        let path = self.ledger_file(&l.topic, l.partition);
        write_atomic(&path, &serde_json::to_vec(l).expect("ledger serializes"))
    }

    /// The partition's alert ledger; if it has none, a new one that starts evaluating after the
    /// lake's committed offset (budgets turned on for a lake that already holds data do not
    /// re-evaluate its past batches), written before it is returned.
    pub fn ensure_ledger(&self, lock: &PartitionLock) -> Result<Ledger> {
        if let Some(l) = self.ledger(lock)? {
            return Ok(l);
        }
        let c = self
            .state(lock.topic(), lock.partition())?
            .committed_through;
        let l = Ledger::new(lock.topic(), lock.partition(), c);
        self.write_ledger(lock, &l)?;
        tracing::info!(
            topic = lock.topic(),
            partition = lock.partition(),
            evaluated_through = c,
            "alert ledger created: budgets are evaluated for batches committed after this offset"
        );
        Ok(l)
    }

    /// The partition's committed raw-event files (`last` ≤ `through`), of the given UTC dates or
    /// of every date, ordered by offset.
    pub fn committed_event_files(
        &self,
        lock: &PartitionLock,
        dates: Option<&[chrono::NaiveDate]>,
        through: i64,
    ) -> Result<Vec<EventFile>> {
        let table = self.root.join(EVENTS_DIR);
        let dirs: Vec<(chrono::NaiveDate, PathBuf)> = match dates {
            Some(ds) => ds
                .iter()
                .map(|d| (*d, self.root.join(layout::date_dir(EVENTS_DIR, *d))))
                .collect(),
            None => {
                let mut v = Vec::new();
                let rd = match fs::read_dir(&table) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(Error::io("list", &table)(e)),
                };
                for e in rd {
                    let e = e.map_err(Error::io("list", &table))?;
                    let date = e
                        .file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("date="))
                        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                    if let Some(d) = date {
                        v.push((d, e.path()));
                    }
                }
                v
            }
        };
        let mut out = Vec::new();
        for (date, dir) in dirs {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(Error::io("list", &dir))?;
                let Some(id) = entry.file_name().to_str().and_then(FileId::parse) else {
                    continue;
                };
                if id.topic == lock.topic()
                    && id.partition == lock.partition()
                    && id.last <= through
                {
                    out.push(EventFile {
                        date,
                        id,
                        path: entry.path(),
                    });
                }
            }
        }
        out.sort_by_key(|a| (a.id.first, a.date));
        Ok(out)
    }

    /// The events of a committed raw-event file whose tenant `keep` accepts, with what budgets
    /// need of them (six of the table's columns are read).
    pub fn read_spend_events(
        &self,
        file: &EventFile,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<SpendEvent>> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
        use parquet::arrow::ProjectionMask;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let path = &file.path;
        let dec = |e: String| Error::Encode {
            what: "budget spend (reading parquet)",
            message: format!("{}: {e}", path.display()),
        };
        let f = File::open(path).map_err(Error::io("open", path))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| dec(e.to_string()))?;
        let schema = builder.schema().clone();
        let names = [
            "tenant_id",
            "agent_id",
            "provider",
            "model",
            "event_time",
            "tokens_uncached_input",
            "tokens_cache_read",
            "tokens_cache_write",
            "tokens_output",
            "tokens_reasoning",
        ];
        let mut roots = Vec::new();
        for n in names {
            roots.push(
                schema
                    .index_of(n)
                    .map_err(|_| dec(format!("no column {n}")))?,
            );
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| dec(e.to_string()))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| dec(e.to_string()))?;
            let s = batch.schema();
            let col = |n: &str| batch.column(s.index_of(n).expect("projected column"));
            let tenant = col("tenant_id").as_string::<i32>();
            let agent = col("agent_id").as_string::<i32>();
            let provider = col("provider").as_string::<i32>();
            let model = col("model").as_string::<i32>();
            let time = col("event_time").as_primitive::<TimestampMicrosecondType>();
            let tokens: Vec<_> = tokenmeter_schemas::Buckets::NAMES
                .iter()
                .map(|b| {
                    col(&format!("tokens_{b}"))
                        .as_primitive::<Int64Type>()
                        .clone()
                })
                .collect();
            for i in 0..batch.num_rows() {
                if !keep(tenant.value(i)) {
                    continue;
                }
                let t = |k: usize| tokens[k].value(i).max(0) as u64;
                out.push(SpendEvent {
                    tenant: tenant.value(i).to_string(),
                    agent: (!agent.is_null(i)).then(|| agent.value(i).to_string()),
                    provider: provider.value(i).to_string(),
                    model: model.value(i).to_string(),
                    time: chrono::DateTime::from_timestamp_micros(time.value(i))
                        .ok_or_else(|| dec(format!("event_time {} out of range", time.value(i))))?,
                    buckets: tokenmeter_schemas::Buckets {
                        uncached_input: t(0),
                        cache_read: t(1),
                        cache_write: t(2),
                        output: t(3),
                        reasoning: t(4),
                    },
                });
            }
        }
        Ok(out)
    }
}

/// A committed raw-event file of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFile {
    /// The UTC date of its events.
    pub date: chrono::NaiveDate,
    /// Its batch.
    pub id: FileId,
    pub path: PathBuf,
}
