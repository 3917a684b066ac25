//! The lake's on-disk layout: where the aggregator puts files, how they are named, and the
//! per-partition commit state that says which of them are committed. Writer (`tokenmeter-aggregate`)
//! and readers (`tokenmeter-query`) share this; it does no I/O.
//!
//! ```text
//! DIR/events/date=YYYY-MM-DD/{topic}-p{partition}-{first:020}-{last:020}.parquet
//! DIR/rollups/hourly/date=YYYY-MM-DD/{topic}-p{partition}-{first:020}-{last:020}.parquet
//! DIR/_state/{topic}/p{partition}.json            commit state of one Kafka partition
//! DIR/_state/{topic}/p{partition}.lock            flock held by the partition's one writer
//! DIR/_state/{topic}/alerts/p{partition}.json     budget alert ledger of one Kafka partition
//! DIR/_staging/{topic}/p{partition}/…/*.parquet.tmp  files being written (never read)
//! DIR/{events,rollups/hourly}/date=…/{…}.r{generation:06}.parquet  restated files
//! DIR/_restatements/{generation:06}.json          a committed restatement (its audit record)
//! DIR/_closes/YYYY-MM.json                        a closed month
//! ```
//! A data file is committed iff its `last` offset ≤ the `committed_through` offset of its
//! partition's state. Readers must list only committed files (see ARCHITECTURE.md).

use serde::{Deserialize, Serialize};

/// Directory of raw events under the lake root.
pub const EVENTS_DIR: &str = "events";
/// Directory of hourly rollups under the lake root.
pub const ROLLUPS_DIR: &str = "rollups/hourly";
/// Directory of commit states under the lake root.
pub const STATE_DIR: &str = "_state";
/// Directory of files being written, under the lake root.
pub const STAGING_DIR: &str = "_staging";
/// Suffix a file carries while it is being written.
pub const TMP_SUFFIX: &str = ".tmp";

/// The identity of a data file: which offsets of which Kafka partition it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub topic: String,
    pub partition: i32,
    /// First offset of the batch the file belongs to.
    pub first: i64,
    /// Last offset of the batch the file belongs to.
    pub last: i64,
}

impl FileId {
    /// The file name, `{topic}-p{partition}-{first:020}-{last:020}.parquet`.
    pub fn file_name(&self) -> String {
        format!(
            "{}-p{}-{:020}-{:020}.parquet",
            self.topic, self.partition, self.first, self.last
        )
    }

    /// Parse a file name made by [`FileId::file_name`]; `None` for anything else.
    pub fn parse(name: &str) -> Option<FileId> {
        let stem = name.strip_suffix(".parquet")?;
        let mut parts = stem.rsplitn(4, '-');
        let last = parts.next()?.parse().ok()?;
        let first = parts.next()?.parse().ok()?;
        let partition = parts.next()?.strip_prefix('p')?.parse().ok()?;
        let topic = parts.next()?.to_string();
        if topic.is_empty() {
            return None;
        }
        Some(FileId {
            topic,
            partition,
            first,
            last,
        })
    }
}

impl FileId {
    /// The name of this batch range's file in restatement `generation`:
    /// `{topic}-p{partition}-{first:020}-{last:020}.r{generation:06}.parquet`.
    pub fn restated_name(&self, generation: u32) -> String {
        format!(
            "{}-p{}-{:020}-{:020}.r{generation:06}.parquet",
            self.topic, self.partition, self.first, self.last
        )
    }
}

/// Directory of restatement manifests (`{generation:06}.json`) and intents
/// (`{generation:06}.intent.json`) under the lake root.
pub const RESTATEMENTS_DIR: &str = "_restatements";
/// Directory of period closes (`YYYY-MM.json`) under the lake root.
pub const CLOSES_DIR: &str = "_closes";

/// The committed offset of one partition at a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutEntry {
    pub topic: String,
    pub partition: i32,
    pub committed_through: i64,
}

/// Old and new cost of one tenant in one currency, in a restatement's audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestatedTotal {
    pub tenant_id: String,
    /// `None`: unpriced usage.
    pub currency: Option<String>,
    pub events: i64,
    /// Decimal strings, scale 12; `None` where nothing was priced.
    pub old_cost: Option<String>,
    pub new_cost: Option<String>,
}

/// The name of a compaction's file of one date (all partitions): `compacted.r{generation:06}.parquet`.
pub fn compacted_name(generation: u32) -> String {
    format!("compacted.r{generation:06}.parquet")
}

/// What a restatement does to its dates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestatementKind {
    /// The costs recomputed with a price book; one file per (topic, partition) and date.
    #[default]
    Reprice,
    /// The same rows and costs in one file per date (all partitions), ordered by tenant and
    /// time: fewer, larger files for readers. `prices_path` and `prices_hash` are empty, and
    /// every total's old and new cost are equal.
    Compaction,
}

/// A committed restatement (`_restatements/{generation:06}.json`): the raw events of the UTC
/// dates `[from, to)` repriced or compacted, with their rollups, as the files listed in `files`
/// (named `*.r{generation:06}.parquet`), next to the originals. For the dates it has files for
/// (a compaction skips dates with nothing to compact), readers show this generation's files in
/// place of every file at or below `cut` (original files after the cut, committed later, stay
/// visible).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restatement {
    pub version: u32,
    #[serde(default)]
    pub kind: RestatementKind,
    pub generation: u32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub created_by: String,
    /// The price book: where it was read from and its XXH3-128.
    pub prices_path: String,
    pub prices_hash: String,
    pub from: chrono::NaiveDate,
    /// Exclusive.
    pub to: chrono::NaiveDate,
    pub cut: Vec<CutEntry>,
    /// Paths of the generation's files, relative to the lake root.
    pub files: Vec<String>,
    pub totals: Vec<RestatedTotal>,
}

/// A closed month (`_closes/YYYY-MM.json`): its invoices are frozen at `cut`; events of the month
/// committed after it are adjustments of the next open month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Close {
    pub version: u32,
    /// `YYYY-MM`.
    pub month: String,
    /// IANA time zone whose midnights bound the month.
    pub tz: String,
    pub closed_at: chrono::DateTime<chrono::Utc>,
    pub closed_by: String,
    pub cut: Vec<CutEntry>,
}

/// Relative path of a partition's commit state.
pub fn state_path(topic: &str, partition: i32) -> String {
    format!("{STATE_DIR}/{topic}/p{partition}.json")
}

/// Relative path of a partition's lock file (an exclusive `flock` held by its one writer).
pub fn lock_path(topic: &str, partition: i32) -> String {
    format!("{STATE_DIR}/{topic}/p{partition}.lock")
}

/// Relative path of a partition's budget alert ledger (in a subdirectory: readers of the commit
/// states list only the files of `_state/{topic}/`).
pub fn alert_ledger_path(topic: &str, partition: i32) -> String {
    format!("{STATE_DIR}/{topic}/alerts/p{partition}.json")
}

/// Relative path of a partition's staging directory.
pub fn staging_path(topic: &str, partition: i32) -> String {
    format!("{STAGING_DIR}/{topic}/p{partition}")
}

/// Relative directory of a date partition of a table (`EVENTS_DIR` or `ROLLUPS_DIR`).
pub fn date_dir(table_dir: &str, date: chrono::NaiveDate) -> String {
    format!("{table_dir}/date={}", date.format("%Y-%m-%d"))
}

/// A batch whose files are written and fsynced, recorded before they are renamed into place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingBatch {
    pub first: i64,
    pub last: i64,
    /// Paths of the batch's final files, relative to the lake root.
    pub files: Vec<String>,
}

/// The commit state of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionState {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    /// Every offset up to and including this one is durably in the lake (or in the dead-letter
    /// topic); -1 when nothing is.
    pub committed_through: i64,
    /// A batch between its intent record and its commit: recovery rolls it forward.
    pub pending: Option<PendingBatch>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_with_dashes_in_topic() {
        let id = FileId {
            topic: "usage.events-eu-1".into(),
            partition: 7,
            first: 0,
            last: 123,
        };
        assert_eq!(FileId::parse(&id.file_name()), Some(id.clone()));
        assert_eq!(FileId::parse("x.parquet"), None);
        assert_eq!(FileId::parse("-p1-1-2.parquet"), None);
        // Readers find restated files through their manifest: the name is not a batch's.
        assert_eq!(FileId::parse(&id.restated_name(3)), None);
    }
}
