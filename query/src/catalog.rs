//! Opening the lake as a DataFusion catalog: a [`SessionContext`] with the tables
//!
//! - `usage_events`: the raw events (schema [`EVENTS_SCHEMA`]) plus the partition column `date`;
//! - `usage_hourly_parts`: the rollup rows as written, partial sums per batch file (schema
//!   [`ROLLUP_SCHEMA`]) plus `date`;
//! - `usage_hourly`: a view summing the parts per rollup key (`sql/usage_hourly.sql`), one row per
//!   key: what analysts should query.
//!
//! `date` is a `Date32` hive partition column (the UTC date in `date=YYYY-MM-DD`). Predicates such
//! as `date >= '2026-11-01'` or `date = DATE '2026-11-01'` are coerced to `Date32` and prune whole
//! directories before any file is opened; so do ranges (`BETWEEN`), which a string column would
//! also allow but with string semantics.
//!
//! Only committed data files are visible: the tables read through [`CommittedStore`], registered
//! for [`LAKE_URL`], which lists only files committed when the catalog opened (a snapshot of the
//! `_state` files) and never a `.tmp` file. A missing or empty lake opens fine: the tables have
//! their schemas and no rows. Table schemas come from `tokenmeter_schemas::tables`, never from
//! inference.
//!
//! Not here: what may be run against the catalog (see [`crate::sqlq`]) and the reports.

use crate::lake_store::{CommittedOffsets, CommittedStore, Restated};
use crate::{Error, Result};
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::ObjectStore;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::memory::InMemory;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::path::Path;
use std::sync::Arc;
use tokenmeter_schemas::layout::{EVENTS_DIR, ROLLUPS_DIR};
use tokenmeter_schemas::tables::{EVENTS_SCHEMA, ROLLUP_SCHEMA};

/// The URL the lake's committed-only store is registered under (one lake per context).
pub const LAKE_URL: &str = "tokenmeter://lake/";

/// Name of the partition column of both tables.
pub const DATE_COLUMN: &str = "date";

/// The `usage_hourly` view's query.
pub const USAGE_HOURLY_SQL: &str = include_str!("../sql/usage_hourly.sql");

/// Which state of the lake a catalog shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Apply only restatements created at or before this time (`--as-of`); `None`: the latest.
    pub as_of: Option<DateTime<Utc>>,
    /// Show the lake as committed at this cut (e.g. a closed month's); `None`: as committed now.
    pub cut: Option<CommittedOffsets>,
}

/// Open the lake at `data_dir` (the aggregator's output directory) for queries, with its latest
/// restatements.
///
/// The commit states are read now: later commits are not seen by this context (open a new one).
pub async fn open_catalog(data_dir: &Path) -> Result<SessionContext> {
    open_view(data_dir, View::default()).await
}

/// Open the lake at `data_dir` in the state `view` names: a cut and the restatements in force.
pub async fn open_view(data_dir: &Path, view: View) -> Result<SessionContext> {
    let (inner, committed): (Arc<dyn ObjectStore>, CommittedOffsets) = match data_dir.metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path = %data_dir.display(), "no lake yet: the tables are empty");
            (Arc::new(InMemory::new()), CommittedOffsets::default())
        }
        Err(e) => {
            return Err(Error::LakeRoot {
                path: data_dir.to_path_buf(),
                message: e.to_string(),
            });
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::LakeRoot {
                path: data_dir.to_path_buf(),
                message: "it is not a directory; pass the aggregator's data directory".into(),
            });
        }
        Ok(_) => {
            let committed = match view.cut {
                Some(c) => c,
                None => CommittedOffsets::read(data_dir)?,
            };
            let (restated, _) = Restated::read(data_dir, view.as_of, Some(&committed))?;
            let fs = LocalFileSystem::new_with_prefix(data_dir).map_err(|e| Error::LakeRoot {
                path: data_dir.to_path_buf(),
                message: e.to_string(),
            })?;
            let store = CommittedStore::with_restated(Arc::new(fs), committed, restated);
            return open_with_store(Arc::new(store)).await;
        }
    };
    open_with_store(Arc::new(CommittedStore::new(inner, committed))).await
}

/// Open the lake at `data_dir` as if `committed` were its commit states (a cut at or before
/// the real ones: files of batches after it are not seen), with the original pricing: no
/// restatement applies (what the ClickHouse sink ships, so reconcile compares like with like).
pub async fn open_catalog_at(
    data_dir: &Path,
    committed: CommittedOffsets,
) -> Result<SessionContext> {
    tracing::debug!(
        path = %data_dir.display(),
        partitions = committed.len(),
        "opened the lake's commit states"
    );
    let fs = LocalFileSystem::new_with_prefix(data_dir).map_err(|e| Error::LakeRoot {
        path: data_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    open_with_store(Arc::new(CommittedStore::new(Arc::new(fs), committed))).await
}

/// The session configuration: one target partition per core, Parquet filter pushdown (raw-event
/// scans filter on `event_time` and `tenant_id`, which row-level pushdown makes cheaper), and an
/// `information_schema` so `SHOW TABLES` works. DataFusion's own environment variables override
/// any of it, as in `datafusion-cli`: `DATAFUSION_EXECUTION_TARGET_PARTITIONS=8` sets
/// `datafusion.execution.target_partitions`. A value DataFusion rejects is an error naming the
/// variable.
pub fn session_config() -> Result<SessionConfig> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = SessionConfig::new()
        .with_target_partitions(cores)
        .with_information_schema(true);
    let options = config.options_mut();
    options.execution.parquet.pushdown_filters = true;
    options.execution.parquet.reorder_filters = true;
    for entry in options.entries() {
        let var = entry.key.to_uppercase().replace('.', "_");
        if let Some(value) = std::env::var_os(&var) {
            let value = value.to_string_lossy();
            options.set(&entry.key, &value).map_err(|e| {
                Error::Config(format!(
                    "{var}={value} cannot set {}: {e}; fix or unset the variable",
                    entry.key
                ))
            })?;
        }
    }
    Ok(config)
}

/// Register the tables over an already-built lake store.
async fn open_with_store(store: Arc<dyn ObjectStore>) -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(session_config()?);
    let url = ObjectStoreUrl::parse(LAKE_URL)?;
    ctx.register_object_store(url.as_ref(), store);
    register_listing(&ctx, "usage_events", EVENTS_DIR, EVENTS_SCHEMA.clone())?;
    register_listing(
        &ctx,
        "usage_hourly_parts",
        ROLLUPS_DIR,
        ROLLUP_SCHEMA.clone(),
    )?;
    ctx.sql(&format!("CREATE VIEW usage_hourly AS {USAGE_HOURLY_SQL}"))
        .await?;
    Ok(ctx)
}

fn register_listing(ctx: &SessionContext, name: &str, dir: &str, schema: SchemaRef) -> Result<()> {
    let format = ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![(DATE_COLUMN.to_string(), DataType::Date32)]);
    let url = ListingTableUrl::parse(format!("{LAKE_URL}{dir}/"))?;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testlake::{Ev, Lake};
    use datafusion::arrow::array::{Array, AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::physical_plan::displayable;

    fn total_rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(|b| b.num_rows()).sum()
    }

    async fn ids(ctx: &SessionContext) -> Vec<String> {
        let batches = ctx
            .sql("SELECT event_id FROM usage_events ORDER BY event_id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_string::<i32>();
                (0..a.len())
                    .map(|i| a.value(i).to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn only_committed_files_are_visible() {
        let lake = Lake::new();
        let ev = |id: &str| Ev::new(id, "2026-11-02T10:00:00Z", "t1");
        // Partition 0 committed through offset 19: its first batch is in, the second is not.
        lake.write_batch("usage", 0, 0, 9, &[ev("committed")]);
        lake.write_batch("usage", 0, 10, 19, &[ev("committed-2").failed()]);
        lake.write_batch("usage", 0, 20, 29, &[ev("uncommitted")]);
        lake.write_state("usage", 0, 19);
        // Partition 1 has files but no state: nothing of it is committed.
        lake.write_batch("usage", 1, 0, 9, &[ev("no-state")]);
        // Temp files of committed offsets, as the aggregator leaves them when it crashes.
        lake.write_batch_tmp("usage", 0, 0, 9, &[ev("temp")]);
        lake.write_batch_tmp("usage", 0, 10, 19, &[ev("temp-2")]);

        let ctx = open_catalog(lake.path()).await.unwrap();
        assert_eq!(ids(&ctx).await, ["committed", "committed-2"]);
        // The rollup tables see the same files.
        let b = ctx
            .sql("SELECT SUM(requests) AS n FROM usage_hourly_parts")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), 2);
        let b = ctx
            .sql("SELECT requests, errors, input_tokens FROM usage_hourly")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(total_rows(&b), 1, "one key, summed over two files");
        let int = |i: usize| b[0].column(i).as_primitive::<Int64Type>().value(0);
        assert_eq!((int(0), int(1), int(2)), (2, 1, 200));

        // A state written after opening is not seen by this context, only by a new one.
        lake.write_state("usage", 0, 29);
        assert_eq!(ids(&ctx).await, ["committed", "committed-2"]);
        let ctx = open_catalog(lake.path()).await.unwrap();
        assert_eq!(ids(&ctx).await, ["committed", "committed-2", "uncommitted"]);
    }

    #[tokio::test]
    async fn missing_and_empty_lakes_open_with_schemas_and_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        for path in [dir.path().join("nope"), dir.path().to_path_buf()] {
            let ctx = open_catalog(&path).await.unwrap();
            for table in ["usage_events", "usage_hourly_parts", "usage_hourly"] {
                let df = ctx.sql(&format!("SELECT * FROM {table}")).await.unwrap();
                let schema = df.schema().as_arrow().clone();
                let batches = df.collect().await.unwrap();
                assert_eq!(total_rows(&batches), 0, "{table}");
                let base = if table == "usage_events" {
                    &EVENTS_SCHEMA
                } else {
                    &ROLLUP_SCHEMA
                };
                assert_eq!(schema.fields().len(), base.fields().len() + 1, "{table}");
                for f in base.fields() {
                    let got = schema.field_with_name(f.name()).unwrap();
                    assert_eq!(got.data_type(), f.data_type(), "{table}.{}", f.name());
                }
                assert_eq!(
                    schema.field_with_name("date").unwrap().data_type(),
                    &DataType::Date32
                );
            }
        }
    }

    #[tokio::test]
    async fn date_predicates_prune_partitions() {
        let lake = Lake::new();
        lake.write_batch(
            "usage",
            0,
            0,
            9,
            &[
                Ev::new("a", "2026-10-31T10:00:00Z", "t1"),
                Ev::new("b", "2026-11-01T10:00:00Z", "t1"),
                Ev::new("c", "2026-11-02T10:00:00Z", "t1"),
            ],
        );
        lake.write_state("usage", 0, 9);
        let ctx = open_catalog(lake.path()).await.unwrap();
        for (sql, dates, n) in [
            ("date >= '2026-11-01'", vec!["2026-11-01", "2026-11-02"], 2),
            ("date = '2026-11-01'", vec!["2026-11-01"], 1),
            (
                "date BETWEEN DATE '2026-10-30' AND '2026-10-31'",
                vec!["2026-10-31"],
                1,
            ),
        ] {
            for table in ["usage_events", "usage_hourly"] {
                let df = ctx
                    .sql(&format!("SELECT * FROM {table} WHERE {sql}"))
                    .await
                    .unwrap();
                let plan = df.clone().create_physical_plan().await.unwrap();
                let text = displayable(plan.as_ref()).indent(true).to_string();
                for d in ["2026-10-31", "2026-11-01", "2026-11-02"] {
                    assert_eq!(
                        text.contains(&format!("date={d}")),
                        dates.contains(&d),
                        "{table} where {sql}: {d} in plan\n{text}"
                    );
                }
                assert_eq!(
                    total_rows(&df.collect().await.unwrap()),
                    n,
                    "{table} where {sql}"
                );
            }
        }
    }
}
