//! The commit protocol under a simulated crash at each of its steps: after recovery and replay
//! from the offset recovery returns, the lake holds every event exactly once, no temporary file
//! is left, and every visible file is valid Parquet.

use crate::support::{Book, PRICES, expected, normalized, read_parquet_dir, totals_of_events};
use std::collections::HashSet;
use tokenmeter_aggregate::lake::{FailPoint, Lake, LakeOptions};
use tokenmeter_aggregate::{PriceBook, PricedEvent};
use tokenmeter_ingest::generate::{GenConfig, Generator};
use tokenmeter_schemas::{DecodeOptions, decode_event};

const TOPIC: &str = "usage.events";

fn events(n: u64) -> (Vec<Vec<u8>>, Vec<PricedEvent>) {
    let book = PriceBook::load(std::path::Path::new(PRICES)).unwrap();
    let msgs: Vec<_> = Generator::new(GenConfig {
        events: n,
        seed: 7,
        ..Default::default()
    })
    .collect();
    let priced = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            PricedEvent::new(
                decode_event(&m.payload, &DecodeOptions::default()).unwrap(),
                &book,
                0,
                i as i64,
            )
        })
        .collect();
    (msgs.into_iter().map(|m| m.payload).collect(), priced)
}

/// Commit `events` in batches of `size` starting at `from`; stop at the first error.
fn run(
    lake: &Lake,
    events: &[PricedEvent],
    from: i64,
    size: usize,
) -> Result<(), tokenmeter_aggregate::Error> {
    let mut start = from as usize;
    while start < events.len() {
        let end = (start + size).min(events.len());
        let lock = lake
            .try_lock(TOPIC, 0)?
            .expect("partition 0 is not locked elsewhere");
        lake.commit(&lock, start as i64, end as i64 - 1, &events[start..end])?;
        start = end;
    }
    Ok(())
}

fn no_tmp_files(dir: &std::path::Path) -> bool {
    crate::support::files_under(dir)
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".tmp"))
}

#[test]
fn a_crash_at_any_step_loses_nothing_and_doubles_nothing() {
    let (payloads, events) = events(3_000);
    let want = normalized(expected(&payloads, &Book::load(PRICES)));
    for (fp, resume_after_crash) in [
        (FailPoint::MidWrite, 1_000), // batch 2 half written in staging: replayed
        (FailPoint::BeforeIntent, 1_000), // batch 2 never reached its intent: replayed
        (FailPoint::AfterIntent, 2_000), // intent recorded: rolled forward
        (FailPoint::MidRename, 2_000),
        (FailPoint::AfterCommit, 2_000),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let crashing = Lake::open(
            dir.path(),
            LakeOptions {
                fail_point: Some((fp, 2)),
                ..Default::default()
            },
        )
        .unwrap();
        let err = run(&crashing, &events, 0, 1_000).unwrap_err();
        assert!(
            matches!(err, tokenmeter_aggregate::Error::FailPoint(p) if p == fp),
            "{err}"
        );
        drop(crashing);

        let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
        let lock = lake.try_lock(TOPIC, 0).unwrap().unwrap();
        let resume = lake.recover(&lock).unwrap();
        assert_eq!(resume, resume_after_crash, "{fp:?}");
        assert!(
            no_tmp_files(dir.path()),
            "{fp:?}: temporary files left after recovery"
        );
        assert_eq!(
            lake.recover(&lock).unwrap(),
            resume,
            "recovery is idempotent"
        );
        drop(lock);
        run(&lake, &events, resume, 700).unwrap();

        let (got, ids) = totals_of_events(&read_parquet_dir(&dir.path().join("events")));
        assert_eq!(ids.len(), events.len(), "{fp:?}: event count");
        assert_eq!(
            ids.iter().collect::<HashSet<_>>().len(),
            ids.len(),
            "{fp:?}: an event id appears twice"
        );
        assert_eq!(got, want, "{fp:?}: per-tenant totals");
        // Rollups hold the same totals.
        let rollups = read_parquet_dir(&dir.path().join("rollups/hourly"));
        let sum = |name: &str| -> i64 {
            use datafusion::arrow::array::AsArray;
            use datafusion::arrow::datatypes::Int64Type;
            rollups
                .iter()
                .map(|b| {
                    b.column_by_name(name)
                        .unwrap()
                        .as_primitive::<Int64Type>()
                        .iter()
                        .flatten()
                        .sum::<i64>()
                })
                .sum()
        };
        assert_eq!(sum("requests"), events.len() as i64);
        assert_eq!(
            sum("tokens_cache_read"),
            want.values().map(|e| e.tokens[1]).sum::<i64>()
        );
    }
}

#[test]
fn a_batch_that_does_not_follow_the_committed_offset_is_refused() {
    let (_, events) = events(10);
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    let lock = lake.try_lock(TOPIC, 0).unwrap().unwrap();
    lake.commit(&lock, 0, 4, &events[..5]).unwrap();
    let e = lake
        .commit(&lock, 3, 9, &events[3..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not follow committed offset 4"), "{e}");
}

#[test]
fn a_partition_lock_excludes_a_second_writer_until_released() {
    let (_, events) = events(10);
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one lake, as two processes would have: flock is per open file.
    let (a, b) = (
        Lake::open(dir.path(), LakeOptions::default()).unwrap(),
        Lake::open(dir.path(), LakeOptions::default()).unwrap(),
    );
    let held = a.try_lock(TOPIC, 0).unwrap().expect("first lock");
    assert!(
        b.try_lock(TOPIC, 0).unwrap().is_none(),
        "second writer got the lock"
    );
    assert!(
        b.try_lock(TOPIC, 1).unwrap().is_some(),
        "other partitions are free"
    );
    assert!(
        b.lock_holder(TOPIC, 0)
            .starts_with(&format!("pid {} ", std::process::id())),
        "{}",
        b.lock_holder(TOPIC, 0)
    );
    a.commit(&held, 0, 4, &events[..5]).unwrap();
    drop(held);
    let lock = b.try_lock(TOPIC, 0).unwrap().expect("released");
    assert_eq!(b.recover(&lock).unwrap(), 5);
    b.commit(&lock, 5, 9, &events[5..]).unwrap();
}

/// Budgets read committed events back from the lake after a restart and fold batches in memory
/// otherwise: both must see the same events with the same times, tenants, agents and tokens, so
/// an alert's spend does not depend on which path found it. Only committed files (`last` ≤ the
/// offset asked for) and only the dates asked for are listed. The alert ledger lives where the
/// readers of the commit states do not trip over it.
#[test]
fn budgets_read_back_exactly_the_committed_events_and_ledgers_round_trip() {
    use tokenmeter_aggregate::budgets::{Ledger, SpendEvent};
    let (_, priced) = events(3_000);
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    run(&lake, &priced, 0, 700).unwrap();
    let lock = lake.try_lock(TOPIC, 0).unwrap().unwrap();
    let key = |e: &SpendEvent| {
        (
            e.time,
            e.tenant.clone(),
            e.agent.clone(),
            e.provider.clone(),
            e.model.clone(),
            e.buckets.as_array(),
        )
    };
    let read = |through: i64, dates: Option<&[chrono::NaiveDate]>| {
        let mut v: Vec<_> = lake
            .committed_event_files(&lock, dates, through)
            .unwrap()
            .iter()
            .flat_map(|f| lake.read_spend_events(f, |_| true).unwrap())
            .map(|e| key(&e))
            .collect();
        v.sort();
        v
    };
    let in_memory = |upto: usize, date: Option<chrono::NaiveDate>| {
        let mut v: Vec<_> = priced[..upto]
            .iter()
            .map(SpendEvent::of)
            .filter(|e| date.is_none_or(|d| e.time.date_naive() == d))
            .map(|e| key(&e))
            .collect();
        v.sort();
        v
    };
    assert_eq!(read(2_999, None), in_memory(3_000, None));
    // Batches end at 699, 1399, …: asking through 1500 lists the first two only.
    assert_eq!(read(1_500, None), in_memory(1_400, None));
    let day = priced[0].time.date_naive();
    assert_eq!(read(2_999, Some(&[day])), in_memory(3_000, Some(day)));
    assert!(
        !read(2_999, Some(&[day])).is_empty() && read(-1, None).is_empty(),
        "dates and offsets filter"
    );

    assert_eq!(lake.ledger(&lock).unwrap(), None);
    let mut l = lake.ensure_ledger(&lock).unwrap();
    assert_eq!(
        l,
        Ledger::new(TOPIC, 0, 2_999),
        "a new ledger starts at the lake's commit"
    );
    l.evaluated_through = 3_000;
    lake.write_ledger(&lock, &l).unwrap();
    assert_eq!(lake.ledger(&lock).unwrap(), Some(l.clone()));
    assert_eq!(lake.ensure_ledger(&lock).unwrap(), l);
    assert!(
        dir.path()
            .join("_state/usage.events/alerts/p0.json")
            .is_file()
    );
    // The catalog's reader of commit states skips the ledger's directory.
    let offsets = tokenmeter_query::lake_store::CommittedOffsets::read(dir.path()).unwrap();
    assert_eq!(offsets.get(TOPIC, 0), Some(2_999));
    assert_eq!(offsets.len(), 1);
}

/// The files' layout, read back with the parquet crate: each column has the encoding its values
/// call for (unique values plain, repeated strings as a dictionary, rising integers as deltas),
/// raw events are compressed with zstd and rollups with LZ4, and a rollup file holds each
/// tenant's rows together, hours rising within a tenant, with page-level statistics for a
/// one-tenant query to skip the others.
#[test]
fn columns_are_encoded_for_their_values_and_rollups_cluster_by_tenant() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMicrosecondType;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    let (_, evs) = events(3_000);
    run(&lake, &evs, 0, evs.len()).unwrap();
    let files = crate::support::files_under(dir.path());
    let (events, rollups): (Vec<_>, Vec<_>) = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .partition(|p| p.to_string_lossy().contains("/events/"));
    assert!(!events.is_empty() && !rollups.is_empty());

    let encodings = |path: &std::path::Path, column: &str| -> Vec<Encoding> {
        let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let rg = r.metadata().row_group(0);
        let c = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == column)
            .unwrap_or_else(|| panic!("{} has no column {column}", path.display()));
        c.encodings().collect()
    };
    // Raw events are zstd (size first), rollups LZ4 (read speed first), every column chunk.
    let codecs = |path: &std::path::Path| -> Vec<parquet::basic::Compression> {
        let r = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        r.metadata()
            .row_groups()
            .iter()
            .flat_map(|rg| rg.columns().iter().map(|c| c.compression()))
            .collect()
    };
    for (files, zstd) in [(&events, true), (&rollups, false)] {
        for f in files {
            let c = codecs(f);
            assert!(!c.is_empty());
            assert!(
                c.iter().all(|c| if zstd {
                    matches!(c, parquet::basic::Compression::ZSTD(_))
                } else {
                    *c == parquet::basic::Compression::LZ4_RAW
                }),
                "{}: {c:?}",
                f.display()
            );
        }
    }
    let dictionary = |e: &[Encoding]| {
        e.contains(&Encoding::RLE_DICTIONARY) || e.contains(&Encoding::PLAIN_DICTIONARY)
    };
    for f in &events {
        for unique in [
            "event_id",
            "latency_ms",
            "input_tokens",
            "tokens_output",
            "cost",
        ] {
            let e = encodings(f, unique);
            assert!(!dictionary(&e), "{unique} has a dictionary: {e:?}");
            assert!(e.contains(&Encoding::PLAIN), "{unique}: {e:?}");
        }
        for repeated in ["tenant_id", "model", "provider"] {
            let e = encodings(f, repeated);
            assert!(dictionary(&e), "{repeated} has no dictionary: {e:?}");
        }
        for rising in ["event_time", "kafka_offset"] {
            let e = encodings(f, rising);
            assert!(
                e.contains(&Encoding::DELTA_BINARY_PACKED),
                "{rising}: {e:?}"
            );
        }
    }

    let mut tenants_seen = 0;
    for f in &rollups {
        let with_index = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .build();
        let r = SerializedFileReader::new_with_options(std::fs::File::open(f).unwrap(), with_index)
            .unwrap();
        assert!(
            r.metadata().column_index().is_some(),
            "{} has no page index",
            f.display()
        );
        for b in crate::support::read_parquet_files(std::slice::from_ref(f)) {
            let s = b.schema();
            let tenant = b
                .column(s.index_of("tenant_id").unwrap())
                .as_string::<i32>();
            let hour = b
                .column(s.index_of("hour").unwrap())
                .as_primitive::<TimestampMicrosecondType>();
            let keys: Vec<_> = (0..b.num_rows())
                .map(|i| (tenant.value(i), hour.value(i)))
                .collect();
            assert!(
                keys.windows(2).all(|w| w[0] <= w[1]),
                "{}: rows are not ordered by tenant, then hour",
                f.display()
            );
            let mut t: Vec<_> = keys.iter().map(|k| k.0).collect();
            t.dedup();
            tenants_seen += t.len();
        }
    }
    // The generator's 3,000 events span many tenants, so the order above was tested on data
    // where it matters.
    assert!(
        tenants_seen > rollups.len(),
        "{tenants_seen} tenants in {} files",
        rollups.len()
    );
}

/// Rollup files have small data pages (`ROLLUP_PAGE_ROWS`), so a one-tenant query decodes few
/// other tenants' rows; raw-event files keep parquet-rs's larger pages. The same rows (a
/// committed rollup file's, repeated past several page limits) are written as each table.
#[test]
fn rollup_pages_are_small_and_raw_event_pages_are_not() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use tokenmeter_aggregate::lake::{ROLLUP_PAGE_ROWS, write_file_atomic};
    use tokenmeter_schemas::layout::{EVENTS_DIR, ROLLUPS_DIR};
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(dir.path(), LakeOptions::default()).unwrap();
    let (_, evs) = events(3_000);
    run(&lake, &evs, 0, evs.len()).unwrap();
    let rollups: Vec<_> = crate::support::files_under(dir.path())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains("/rollups/")
                && p.extension().is_some_and(|x| x == "parquet")
        })
        .collect();
    let one = crate::support::read_parquet_files(&rollups);
    let one = datafusion::arrow::compute::concat_batches(&one[0].schema(), &one).unwrap();
    let copies = (5 * ROLLUP_PAGE_ROWS).div_ceil(one.num_rows());
    let rows = copies * one.num_rows();
    let batch =
        datafusion::arrow::compute::concat_batches(&one.schema(), &vec![one.clone(); copies])
            .unwrap();
    assert!((5 * ROLLUP_PAGE_ROWS..20_000).contains(&rows), "{rows}");

    // Rows per data page of each column of the file's only row group.
    let pages = |path: &std::path::Path| -> Vec<Vec<i64>> {
        let opts = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .build();
        let r = SerializedFileReader::new_with_options(std::fs::File::open(path).unwrap(), opts)
            .unwrap();
        let md = r.metadata();
        assert_eq!(md.num_row_groups(), 1);
        let n = md.row_group(0).num_rows();
        md.offset_index().unwrap()[0]
            .iter()
            .map(|col| {
                let starts: Vec<i64> = col
                    .page_locations()
                    .iter()
                    .map(|p| p.first_row_index)
                    .collect();
                starts
                    .iter()
                    .zip(starts.iter().skip(1).chain([&n]))
                    .map(|(a, b)| b - a)
                    .collect()
            })
            .collect()
    };
    let out = tempfile::tempdir().unwrap();
    for (table, small) in [(ROLLUPS_DIR, true), (EVENTS_DIR, false)] {
        let path = out
            .path()
            .join(format!("{}.parquet", table.replace('/', "_")));
        write_file_atomic(&path, table, &batch).unwrap();
        for (c, col) in pages(&path).iter().enumerate() {
            assert_eq!(col.iter().sum::<i64>(), rows as i64);
            if small {
                assert!(col.len() >= 5, "{table} column {c}: {col:?}");
                assert!(
                    col.iter().all(|&n| n <= ROLLUP_PAGE_ROWS as i64),
                    "{table} column {c}: {col:?}"
                );
            } else {
                assert_eq!(col.len(), 1, "{table} column {c}: {col:?}");
            }
        }
    }
}
