//! The committed-only view of the lake: an [`ObjectStore`] wrapper that lists and serves only the
//! data files that were committed when the catalog opened, and refuses every write.
//!
//! A data file (`{topic}-p{partition}-{first:020}-{last:020}.parquet`) is committed iff its `last`
//! offset is ≤ the `committed_through` of its partition's `_state/{topic}/p{partition}.json`
//! ([`tokenmeter_schemas::layout`]). The states are read once, by [`CommittedOffsets::read`]: the
//! store is a snapshot, so a query never sees half of a batch the aggregator commits while it
//! runs. Hidden: temp files (`*.tmp`), files of partitions without a state, files past the
//! committed offset, and any name the aggregator does not write.
//!
//! A view may apply restatements ([`Restated`]): for a restated UTC date it shows the
//! restatement's files (`*.r{generation}.parquet`) in place of the originals at or below the
//! restatement's cut, and the originals after the cut (committed later) as they are.
//!
//! Not here: table definitions (see [`crate::catalog`]).

use crate::{Error, Result};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use tokenmeter_schemas::layout::{
    FileId, PartitionState, RESTATEMENTS_DIR, Restatement, STATE_DIR, TMP_SUFFIX,
};

/// Newest commit-state version this reader understands.
pub const MAX_STATE_VERSION: u32 = 1;

/// `committed_through` of every (topic, partition) that has a state file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedOffsets(HashMap<(String, i32), i64>);

impl CommittedOffsets {
    /// Read every `_state/{topic}/p{partition}.json` under the lake root. A missing `_state`
    /// directory means nothing is committed yet. Temp files are skipped.
    pub fn read(root: &std::path::Path) -> Result<Self> {
        let state_root = root.join(STATE_DIR);
        let mut map = HashMap::new();
        let topics = match std::fs::read_dir(&state_root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self(map)),
            Err(e) => {
                return Err(Error::LakeState {
                    path: state_root,
                    message: e.to_string(),
                });
            }
        };
        let list_err = |path: &std::path::Path, e: std::io::Error| Error::LakeState {
            path: path.to_path_buf(),
            message: format!("cannot list it: {e}"),
        };
        for topic_dir in topics {
            let topic_dir = topic_dir.map_err(|e| list_err(&state_root, e))?.path();
            if !topic_dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&topic_dir).map_err(|e| list_err(&topic_dir, e))? {
                let path = file.map_err(|e| list_err(&topic_dir, e))?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.ends_with(TMP_SUFFIX) || !name.ends_with(".json") || !path.is_file() {
                    continue;
                }
                let state = read_state(&path)?;
                let expected = root.join(tokenmeter_schemas::layout::state_path(
                    &state.topic,
                    state.partition,
                ));
                if expected != path {
                    return Err(Error::LakeState {
                        path,
                        message: format!(
                            "it describes topic {:?} partition {}, which belongs in {}",
                            state.topic,
                            state.partition,
                            expected.display()
                        ),
                    });
                }
                map.insert((state.topic, state.partition), state.committed_through);
            }
        }
        Ok(Self(map))
    }

    /// `committed_through` of a partition, if it has a state.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(&(topic.to_string(), partition)).copied()
    }

    /// Every ((topic, partition), committed_through).
    pub fn iter(&self) -> impl Iterator<Item = (&(String, i32), &i64)> {
        self.0.iter()
    }

    /// Number of (topic, partition) states.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no partition has a state.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object at `location` is a committed data file.
    pub fn is_visible(&self, location: &Path) -> bool {
        let Some(name) = location.filename() else {
            return false;
        };
        if name.ends_with(TMP_SUFFIX) {
            return false;
        }
        let Some(id) = FileId::parse(name) else {
            return false;
        };
        self.0
            .get(&(id.topic, id.partition))
            .is_some_and(|&through| id.last <= through)
    }
}

impl FromIterator<((String, i32), i64)> for CommittedOffsets {
    /// Offsets given explicitly: `((topic, partition), committed_through)`.
    fn from_iter<I: IntoIterator<Item = ((String, i32), i64)>>(it: I) -> Self {
        Self(it.into_iter().collect())
    }
}

fn read_state(path: &std::path::Path) -> Result<PartitionState> {
    let err = |message: String| Error::LakeState {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let state: PartitionState =
        serde_json::from_str(&text).map_err(|e| err(format!("not a partition state: {e}")))?;
    if state.version > MAX_STATE_VERSION {
        return Err(err(format!(
            "state version {} is newer than this reader (≤ {MAX_STATE_VERSION}); upgrade tokenmeter",
            state.version
        )));
    }
    Ok(state)
}

/// The restatements a view applies: per UTC date, the generation in force, its cut and its
/// files (paths relative to the lake root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restated(BTreeMap<NaiveDate, (u32, Arc<Cut>, Arc<GenerationFiles>)>);

/// The files of one restatement generation, relative to the lake root.
pub type GenerationFiles = HashSet<String>;

/// `committed_through` per (topic, partition) at a restatement's cut.
pub type Cut = HashMap<(String, i32), i64>;

impl Restated {
    /// The committed restatements of the lake at `root`, oldest first, keeping those created at
    /// or before `as_of` and, with `within`, those whose cut is at or below it (a view at an
    /// earlier cut must not show rows of batches after it). A missing directory means none.
    pub fn read(
        root: &std::path::Path,
        as_of: Option<DateTime<Utc>>,
        within: Option<&CommittedOffsets>,
    ) -> Result<(Self, Vec<Restatement>)> {
        let mut all = read_restatements(root)?;
        all.retain(|r| {
            as_of.is_none_or(|t| r.created_at <= t)
                && within.is_none_or(|c| {
                    r.cut.iter().all(|e| {
                        c.get(&e.topic, e.partition)
                            .is_some_and(|t| e.committed_through <= t)
                    })
                })
        });
        let mut map = BTreeMap::new();
        for r in &all {
            let cut: Arc<Cut> = Arc::new(
                r.cut
                    .iter()
                    .map(|e| ((e.topic.clone(), e.partition), e.committed_through))
                    .collect(),
            );
            let files: Arc<GenerationFiles> = Arc::new(r.files.iter().cloned().collect());
            // In force on the dates it has files for: a compaction leaves out the dates of its
            // range that had nothing to compact (and a reprice writes files for every date of
            // its range that has events).
            for d in r
                .files
                .iter()
                .filter_map(|f| date_of(&Path::from(f.as_str())))
            {
                map.insert(d, (r.generation, Arc::clone(&cut), Arc::clone(&files)));
            }
        }
        Ok((Self(map), all))
    }

    /// Whether no date is restated.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The generation and cut in force for `date`.
    pub fn for_date(&self, date: NaiveDate) -> Option<(u32, &Cut)> {
        self.0.get(&date).map(|(g, c, _)| (*g, c.as_ref()))
    }

    /// Whether `rel` (a path relative to the lake root) is a file of the generation in force
    /// for `date`.
    pub fn is_file_of(&self, date: NaiveDate, rel: &str) -> bool {
        self.0.get(&date).is_some_and(|(_, _, f)| f.contains(rel))
    }
}

/// Every committed restatement manifest of the lake, by generation.
pub fn read_restatements(root: &std::path::Path) -> Result<Vec<Restatement>> {
    let mut out: Vec<Restatement> = read_records(
        &root.join(RESTATEMENTS_DIR),
        "restatement manifest",
        |stem| {
            // Manifests only: not intents (`*.intent.json`) nor temp files.
            stem.len() == 6 && stem.bytes().all(|b| b.is_ascii_digit())
        },
    )?;
    out.sort_by_key(|r| r.generation);
    Ok(out)
}

/// The JSON records `{stem}.json` of a directory whose stem `keep` accepts; a missing directory
/// holds none. `what` names a record in errors.
pub fn read_records<T: serde::de::DeserializeOwned>(
    dir: &std::path::Path,
    what: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<T>> {
    let err = |path: &std::path::Path, message: String| Error::LakeState {
        path: path.to_path_buf(),
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(dir, e.to_string())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| err(dir, e.to_string()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        match name.strip_suffix(".json") {
            Some(stem) if keep(stem) => {}
            _ => continue,
        }
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        out.push(
            serde_json::from_str(&text).map_err(|e| err(&path, format!("not a {what}: {e}")))?,
        );
    }
    Ok(out)
}

/// The UTC date of a data file, from its `date=YYYY-MM-DD` directory.
fn date_of(location: &Path) -> Option<NaiveDate> {
    location.parts().find_map(|p| {
        p.as_ref()
            .strip_prefix("date=")
            .and_then(|d| d.parse().ok())
    })
}

/// Whether `location` is visible: a committed original not replaced by the restatement of its
/// date, or a file its manifest lists (a repriced file per partition, or a compaction's file of
/// the whole date). Restatements whose cut is past the view's are not in `restated`.
pub fn visible(committed: &CommittedOffsets, restated: &Restated, location: &Path) -> bool {
    if restated.is_empty() {
        return committed.is_visible(location);
    }
    let Some(name) = location.filename() else {
        return false;
    };
    if name.ends_with(TMP_SUFFIX) {
        return false;
    }
    let in_force = date_of(location).and_then(|d| restated.for_date(d).map(|r| (d, r)));
    if let Some((date, _)) = in_force
        && restated.is_file_of(date, location.as_ref())
    {
        return true;
    }
    let Some(id) = FileId::parse(name) else {
        return false;
    };
    let Some(through) = committed.get(&id.topic, id.partition) else {
        return false;
    };
    if id.last > through {
        return false;
    }
    match in_force {
        None => true,
        Some((_, (_, cut))) => cut
            .get(&(id.topic.clone(), id.partition))
            .is_none_or(|&c| id.first > c),
    }
}

/// The data files under `root/dir` (`events` or `rollups/hourly`) that a catalog opened now
/// shows, with their sizes, sorted: for tools that read the lake's Parquet files themselves.
pub fn visible_files(root: &std::path::Path, dir: &str) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let committed = CommittedOffsets::read(root)?;
    let (restated, _) = Restated::read(root, None, Some(&committed))?;
    visible_files_at(root, dir, &committed, &restated)
}

/// The data files under `root/dir` that a view at (`committed`, `restated`) shows, with their
/// sizes, sorted.
pub fn visible_files_at(
    root: &std::path::Path,
    dir: &str,
    committed: &CommittedOffsets,
    restated: &Restated,
) -> Result<Vec<(std::path::PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::LakeState {
                    path: d,
                    message: format!("cannot list it: {e}"),
                });
            }
        };
        for e in entries {
            let e = e.map_err(|e| Error::LakeState {
                path: d.clone(),
                message: format!("cannot list it: {e}"),
            })?;
            let path = e.path();
            let meta = e.metadata().map_err(|e| Error::LakeState {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy();
            if visible(committed, restated, &Path::from(rel.as_ref())) {
                out.push((path.clone(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A read-only object store that shows only committed data files of `inner`.
#[derive(Debug)]
pub struct CommittedStore {
    inner: Arc<dyn ObjectStore>,
    committed: Arc<CommittedOffsets>,
    restated: Arc<Restated>,
}

impl CommittedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, committed: CommittedOffsets) -> Self {
        Self::with_restated(inner, committed, Restated::default())
    }

    /// A view that also applies restatements.
    pub fn with_restated(
        inner: Arc<dyn ObjectStore>,
        committed: CommittedOffsets,
        restated: Restated,
    ) -> Self {
        Self {
            inner,
            committed: Arc::new(committed),
            restated: Arc::new(restated),
        }
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        if visible(&self.committed, &self.restated, location) {
            Ok(())
        } else {
            Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not a committed data file of the lake".into(),
            })
        }
    }
}

impl fmt::Display for CommittedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommittedStore({})", self.inner)
    }
}

fn read_only() -> object_store::Error {
    object_store::Error::NotSupported {
        source: "the lake is read-only to tokenmeter-query; only the aggregator writes it".into(),
    }
}

#[async_trait]
impl ObjectStore for CommittedStore {
    async fn put_opts(
        &self,
        _location: &Path,
        _payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(read_only())
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(read_only())
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        locations.map(|_| Err(read_only())).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let committed = Arc::clone(&self.committed);
        let restated = Arc::clone(&self.restated);
        self.inner
            .list(prefix)
            .filter(move |m| {
                let keep = match m {
                    Ok(m) => visible(&committed, &restated, &m.location),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let committed = Arc::clone(&self.committed);
        let restated = Arc::clone(&self.restated);
        self.inner
            .list_with_offset(prefix, offset)
            .filter(move |m| {
                let keep = match m {
                    Ok(m) => visible(&committed, &restated, &m.location),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        result
            .objects
            .retain(|m| visible(&self.committed, &self.restated, &m.location));
        Ok(result)
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }

    async fn rename_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: RenameOptions,
    ) -> object_store::Result<()> {
        Err(read_only())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::object_store::ObjectStoreExt;
    use datafusion::object_store::memory::InMemory;

    fn offsets() -> CommittedOffsets {
        [(("usage.events-eu".to_string(), 3), 99)]
            .into_iter()
            .collect()
    }

    #[test]
    fn visibility_follows_the_committed_offset() {
        let c = offsets();
        let p = |s: &str| Path::from(format!("events/date=2026-11-01/{s}"));
        let name = |topic: &str, partition: i32, last: i64| {
            FileId {
                topic: topic.into(),
                partition,
                first: 0,
                last,
            }
            .file_name()
        };
        assert!(c.is_visible(&p(&name("usage.events-eu", 3, 99))));
        assert!(!c.is_visible(&p(&name("usage.events-eu", 3, 100))));
        assert!(!c.is_visible(&p(&name("usage.events-eu", 4, 1))));
        assert!(!c.is_visible(&p(&name("other", 3, 1))));
        assert!(!c.is_visible(&p(&format!("{}.tmp", name("usage.events-eu", 3, 1)))));
        assert!(!c.is_visible(&p("part-0.parquet")));
    }

    #[test]
    fn states_are_read_checked_and_temp_states_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CommittedOffsets::read(dir.path()).unwrap().is_empty());
        let state = |topic: &str, partition: i32, through: i64| {
            serde_json::json!({"version": 1, "topic": topic, "partition": partition,
                               "committed_through": through, "pending": null})
            .to_string()
        };
        let topic_dir = dir.path().join("_state/usage.events-eu");
        std::fs::create_dir_all(&topic_dir).unwrap();
        std::fs::write(topic_dir.join("p3.json"), state("usage.events-eu", 3, 99)).unwrap();
        std::fs::write(topic_dir.join("p3.json.tmp"), "{ half written").unwrap();
        assert_eq!(CommittedOffsets::read(dir.path()).unwrap(), offsets());

        std::fs::write(topic_dir.join("p4.json"), state("usage.events-eu", 5, 1)).unwrap();
        let e = CommittedOffsets::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("describes topic \"usage.events-eu\" partition 5"),
            "{e}"
        );
        std::fs::write(topic_dir.join("p4.json"), "{}").unwrap();
        let e = CommittedOffsets::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a partition state"), "{e}");
        std::fs::write(
            topic_dir.join("p4.json"),
            state("usage.events-eu", 4, 1).replace("\"version\":1", "\"version\":2"),
        )
        .unwrap();
        let e = CommittedOffsets::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("upgrade tokenmeter"), "{e}");
    }

    #[tokio::test]
    async fn the_store_hides_uncommitted_files_and_refuses_writes() {
        let inner = Arc::new(InMemory::new());
        let name = |last: i64| {
            let id = FileId {
                topic: "usage.events-eu".into(),
                partition: 3,
                first: 0,
                last,
            };
            Path::from(format!("events/date=2026-11-01/{}", id.file_name()))
        };
        inner.put(&name(99), "a".into()).await.unwrap();
        inner.put(&name(100), "b".into()).await.unwrap();
        let store = CommittedStore::new(inner, offsets());
        let listed: Vec<_> = store
            .list(Some(&Path::from("events")))
            .map(|m| m.unwrap().location)
            .collect()
            .await;
        assert_eq!(listed, [name(99)]);
        let listed = store
            .list_with_delimiter(Some(&Path::from("events/date=2026-11-01")))
            .await
            .unwrap();
        assert_eq!(listed.objects.len(), 1);
        assert!(store.get(&name(99)).await.is_ok());
        assert!(matches!(
            store.get(&name(100)).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(matches!(
            store.head(&name(100)).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(matches!(
            store.put(&name(1), "c".into()).await,
            Err(object_store::Error::NotSupported { .. })
        ));
        assert!(matches!(
            store.delete(&name(99)).await,
            Err(object_store::Error::NotSupported { .. })
        ));
        assert!(store.get(&name(99)).await.is_ok());
    }
}
