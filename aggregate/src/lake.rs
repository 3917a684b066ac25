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
//! Not here: Kafka (the caller supplies offsets) and fencing between processes.

use crate::record::{PricedEvent, events_batch, rollup_batch};
use crate::rollup::fold;
use crate::{Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenmeter_schemas::layout::{
    self, EVENTS_DIR, FileId, PartitionState, PendingBatch, ROLLUPS_DIR, TMP_SUFFIX,
};

/// A point in the commit protocol where a test can make the writer fail as if it crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// Files written and fsynced under temporary names; no intent yet.
    BeforeIntent,
    /// Intent recorded; no file renamed yet.
    AfterIntent,
    /// Intent recorded; the first file renamed, the others not.
    MidRename,
    /// Batch committed in the lake; Kafka offsets not yet committed (the caller's next step).
    AfterCommit,
}

impl std::str::FromStr for FailPoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "before_intent" => FailPoint::BeforeIntent,
            "after_intent" => FailPoint::AfterIntent,
            "mid_rename" => FailPoint::MidRename,
            "after_commit" => FailPoint::AfterCommit,
            _ => {
                return Err(format!(
                    "unknown fail point {s:?}: before_intent|after_intent|mid_rename|after_commit"
                ));
            }
        })
    }
}

/// Writer settings.
#[derive(Debug, Clone)]
pub struct LakeOptions {
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// Fail (as if crashed) at this point of the Nth batch commit (1-based) of this process.
    pub fail_point: Option<(FailPoint, u64)>,
}

impl Default for LakeOptions {
    fn default() -> Self {
        Self {
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            fail_point: None,
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

/// The staging directory of one partition.
fn staging_dir(root: &Path, topic: &str, partition: i32) -> PathBuf {
    root.join(layout::staging_path(topic, partition))
}

/// Where the final file at `rel` (relative to the root) is staged.
fn staged(root: &Path, topic: &str, partition: i32, rel: &str) -> PathBuf {
    tmp_of(&staging_dir(root, topic, partition).join(rel))
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
        let dir = path.parent().expect("state path has a parent");
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        let tmp = tmp_of(&path);
        let bytes = serde_json::to_vec_pretty(s).expect("state serializes");
        let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(Error::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
        fsync_dir(dir)
    }

    /// Make the partition's files agree with its state and return the offset to resume from
    /// (`committed_through + 1`, or 0). Idempotent; run before consuming the partition.
    pub fn recover(&self, topic: &str, partition: i32) -> Result<i64> {
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
        match self.opts.fail_point {
            Some((p, k)) if p == at && k == n => Err(Error::FailPoint(at)),
            _ => Ok(()),
        }
    }

    /// Write `batch` as Parquet at `tmp` and fsync it.
    fn write_parquet(&self, tmp: &Path, batch: &arrow::array::RecordBatch) -> Result<u64> {
        let dir = tmp.parent().expect("file has a parent");
        fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        let file = File::create(tmp).map_err(Error::io("create", tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.opts.zstd_level).unwrap_or_default(),
            ))
            .set_max_row_group_row_count(Some(self.opts.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .build();
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
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
        events: &[PricedEvent],
    ) -> Result<CommitReport> {
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
            report.bytes += self.write_parquet(&tmp, &events_batch(topic, evs)?)?;
            report.files.push(rel);
            let rows = fold(evs.iter().copied());
            let rows: Vec<_> = rows.iter().collect();
            report.rollup_rows += rows.len();
            let rel = format!("{}/{name}", layout::date_dir(ROLLUPS_DIR, *date));
            let tmp = staged(&self.root, topic, partition, &rel);
            report.bytes += self.write_parquet(&tmp, &rollup_batch(&rows)?)?;
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
}
