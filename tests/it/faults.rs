//! Faults around the aggregator, each against real processes: two aggregators in one consumer
//! group with one of them restarted and one frozen (a zombie) — the partition lock must keep
//! them from writing one partition together; the broker SIGKILLed and restarted on its storage;
//! a full disk under the lake; poison messages (with the Prometheus metrics scraped); and events
//! that arrive after their hour was flushed.

use crate::reliability::{
    Traffic, aggregate_args, assert_dead_letters, assert_lake_exact, produce_in_background, traffic,
};
use crate::services::{
    Aggregator, PrivateBroker, assert_ranges_disjoint, assert_table_files_valid, brokers,
    caught_up, committed, count_lines, create_topics, free_port, read_topic, tail, unique_topic,
    wait_for, wait_logged,
};
use crate::support::{Book, PRICES, expected, normalized};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

pub fn stop(a: Aggregator) {
    a.signal(libc::SIGTERM);
    let s = a.wait(Duration::from_secs(120));
    assert!(s.success(), "aggregator did not stop cleanly: {s}");
}

/// Two aggregator processes in one group on a 4-partition topic while 150k messages flow: B is
/// stopped and restarted eight times, so partitions move back and forth; then A, owning every
/// partition, is frozen with SIGSTOP while a successor is handed its partitions — the successor
/// must wait on A's locks, not write beside the zombie, and take over only when A lets go.
#[test]
fn two_aggregators_and_a_zombie_never_write_one_partition_together() {
    let brokers = brokers();
    let topic = unique_topic("rebalance");
    let dlq = format!("{topic}.dlq");
    runtime().block_on(create_topics(&brokers, &[(&topic, 4), (&dlq, 1)]));
    let t = traffic(150_000, 21, 0.002, 0.05);
    // Half before, half during the rebalances (tansu serves fetches slowly while it ingests).
    let half = t.messages.len() / 2;
    let (first, _) =
        produce_in_background(brokers.clone(), topic.clone(), t.messages[..half].to_vec());
    first.join().unwrap();
    let (producer, _) =
        produce_in_background(brokers.clone(), topic.clone(), t.messages[half..].to_vec());
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let group = format!("{topic}-pair");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    args.extend(["--flush-max-messages", "5000", "--flush-interval", "1"]);
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let a = Aggregator::start(&args, &[], &log_a);
    let assigned = |log: &Path| count_lines(log, "partition assigned and locked");
    // B joins: wait for the rebalance to hand partitions to both.
    let join_b = || {
        let (before_a, before_b) = (assigned(&log_a), assigned(&log_b));
        let b = Aggregator::start(&args, &[], &log_b);
        wait_logged(
            "the group to rebalance over A and B",
            Duration::from_secs(90),
            &log_b,
            || assigned(&log_b) > before_b && assigned(&log_a) > before_a,
        );
        b
    };
    wait_for("A to join", Duration::from_secs(60), || {
        assigned(&log_a) > 0
    });
    for cycle in 0..8u64 {
        let b = join_b();
        std::thread::sleep(Duration::from_millis(500 + 300 * cycle));
        // A clean stop (LeaveGroup): A takes every partition back. (SIGKILL is the kill
        // loop's business: a SIGKILLed dynamic member leaves tansu 0.6's group stuck.)
        let before_a = assigned(&log_a);
        stop(b);
        wait_logged(
            "A to take every partition",
            Duration::from_secs(90),
            &log_a,
            || assigned(&log_a) >= before_a + 4,
        );
    }
    // The zombie. A owns every partition and freezes (SIGSTOP) while the broker hands the
    // partitions to Z, a process that believes it owns them. (The broker-side way there, A's
    // session expiring, does not happen with tansu 0.6, which never expires a silent member;
    // Z joins a group of its own to the same effect.) Z must wait on A's locks, not write.
    let holds = |pid: i32| -> Vec<i32> {
        (0..4)
            .filter(|p| {
                std::fs::read_to_string(lake.join(format!("_state/{topic}/p{p}.lock")))
                    .is_ok_and(|s| s.starts_with(&format!("pid {pid} ")))
            })
            .collect()
    };
    wait_logged(
        "A to hold every lock",
        Duration::from_secs(60),
        &log_a,
        || holds(a.pid()).len() == 4,
    );
    a.signal(libc::SIGSTOP);
    let frozen = committed(&lake, &topic, 4);
    let log_z = dir.path().join("z.log");
    let zgroup = format!("{topic}-pair-zombie-successor");
    let zargs = {
        let group = &zgroup;
        let mut z = aggregate_args(&brokers, &topic, &dlq, &lake_s, group);
        z.extend(["--flush-max-messages", "5000", "--flush-interval", "1"]);
        z
    };
    let z = Aggregator::start(&zargs, &[], &log_z);
    wait_logged(
        "Z to find A's partitions locked",
        Duration::from_secs(60),
        &log_z,
        || count_lines(&log_z, "locked by another aggregator") > 0,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        committed(&lake, &topic, 4),
        frozen,
        "a partition moved while its owner was frozen"
    );
    // A wakes up and, still holding its locks, may go on committing; Z still waits.
    a.signal(libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count_lines(&log_z, "partition lock acquired after waiting"),
        0
    );
    // A stops: Z takes over from where A left.
    stop(a);
    wait_logged(
        "Z to take the partitions",
        Duration::from_secs(120),
        &log_z,
        || count_lines(&log_z, "partition lock acquired after waiting") > 0,
    );
    assert_eq!(producer.join().unwrap(), (t.messages.len() - half) as u64);
    wait_logged("Z to catch up", Duration::from_secs(600), &log_z, || {
        caught_up(&brokers, &lake, &topic, 4)
    });
    stop(z);
    assert_table_files_valid(&lake);
    let batches = assert_ranges_disjoint(&lake, &topic);
    assert!(batches > 8, "{batches} batches");
    assert_lake_exact(&lake, &t);
    assert_dead_letters(&brokers, &dlq, &t);
}

/// The broker is SIGKILLed while the aggregator runs and started again on its sqlite storage:
/// the aggregator reconnects by itself, the producer retries, and nothing is lost or doubled.
#[test]
fn broker_restart_while_aggregating_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = PrivateBroker::start(&dir.path().join("broker"));
    let addr = broker.addr();
    let (topic, dlq) = ("usage.events".to_string(), "usage.events.dlq".to_string());
    runtime().block_on(create_topics(&addr, &[(&topic, 2), (&dlq, 1)]));
    let t = traffic(60_000, 31, 0.002, 0.05);
    let half = t.messages.len() / 2;
    let sent = AtomicU64::new(0);
    runtime()
        .block_on(tokenmeter_ingest::produce::produce_all(
            &addr,
            &topic,
            &[],
            t.messages[..half].to_vec(),
            &sent,
        ))
        .unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let mut args = aggregate_args(&addr, &topic, &dlq, &lake_s, "restart");
    args.extend(["--flush-max-messages", "5000", "--flush-interval", "1"]);
    let log = dir.path().join("aggregate.log");
    let a = Aggregator::start(&args, &[], &log);
    wait_logged("a first commit", Duration::from_secs(120), &log, || {
        committed(&lake, &topic, 2).values().any(|c| *c >= 0)
    });
    broker.kill9();
    // Down for a while: the aggregator's fetches and commits fail meanwhile.
    std::thread::sleep(Duration::from_secs(4));
    broker.restart();
    let (producer, _) =
        produce_in_background(addr.clone(), topic.clone(), t.messages[half..].to_vec());
    assert_eq!(producer.join().unwrap(), (t.messages.len() - half) as u64);
    wait_logged(
        "the aggregator to catch up after the restart",
        Duration::from_secs(600),
        &log,
        || caught_up(&addr, &lake, &topic, 2),
    );
    stop(a);
    assert_table_files_valid(&lake);
    assert_lake_exact(&lake, &t);
    assert_dead_letters(&addr, &dlq, &t);
}

/// Fills (as root: a small tmpfs) or write-protects (otherwise) the lake mid-run.
struct DiskFault {
    lake: std::path::PathBuf,
    tmpfs: bool,
}

impl DiskFault {
    fn new(lake: &Path) -> DiskFault {
        std::fs::create_dir_all(lake).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tmpfs = root
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
                .arg(lake)
                .status()
                .is_ok_and(|s| s.success());
        DiskFault {
            lake: lake.to_path_buf(),
            tmpfs,
        }
    }

    fn inject(&self) {
        if self.tmpfs {
            use std::io::Write;
            let mut f = std::fs::File::create(self.lake.join("filler")).unwrap();
            let chunk = vec![0u8; 1 << 20];
            while f.write_all(&chunk).is_ok() {}
        } else {
            self.chmod(0o555);
        }
    }

    fn clear(&self) {
        if self.tmpfs {
            std::fs::remove_file(self.lake.join("filler")).unwrap();
        } else {
            self.chmod(0o755);
        }
    }

    fn chmod(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let mut stack = vec![self.lake.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

impl Drop for DiskFault {
    fn drop(&mut self) {
        if self.tmpfs {
            let _ = std::process::Command::new("umount")
                .arg(&self.lake)
                .status();
        }
    }
}

/// The disk under the lake fills up mid-run: commits fail, the aggregator stops advancing,
/// logs, retries with backoff, and completes without loss once space is back.
#[test]
fn a_full_disk_stops_commits_until_space_returns_without_loss() {
    let brokers = brokers();
    let topic = unique_topic("diskfull");
    let dlq = format!("{topic}.dlq");
    runtime().block_on(create_topics(&brokers, &[(&topic, 2), (&dlq, 1)]));
    let t = traffic(40_000, 41, 0.002, 0.05);
    let half = t.messages.len() / 2;
    let produce = |m: &[(Option<String>, Vec<u8>)]| {
        let sent = AtomicU64::new(0);
        runtime()
            .block_on(tokenmeter_ingest::produce::produce_all(
                &brokers,
                &topic,
                &[],
                m.to_vec(),
                &sent,
            ))
            .unwrap();
    };
    produce(&t.messages[..half]);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let fault = DiskFault::new(&lake);
    let lake_s = lake.to_str().unwrap().to_string();
    let group = format!("{topic}-diskfull");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    args.extend(["--flush-max-messages", "5000", "--flush-interval", "1"]);
    let log = dir.path().join("aggregate.log");
    let a = Aggregator::start(&args, &[], &log);
    wait_logged("the first half", Duration::from_secs(300), &log, || {
        caught_up(&brokers, &lake, &topic, 2)
    });
    fault.inject();
    produce(&t.messages[half..]);
    wait_logged(
        "failed commits to be logged",
        Duration::from_secs(120),
        &log,
        || count_lines(&log, "batch commit failed; retrying") >= 3,
    );
    let stuck = committed(&lake, &topic, 2);
    wait_for("more retries", Duration::from_secs(120), || {
        count_lines(&log, "batch commit failed; retrying") >= 5
    });
    assert_eq!(
        committed(&lake, &topic, 2),
        stuck,
        "commits advanced on a full disk"
    );
    assert!(!caught_up(&brokers, &lake, &topic, 2));
    fault.clear();
    wait_logged(
        "the aggregator to catch up once space is back",
        Duration::from_secs(300),
        &log,
        || caught_up(&brokers, &lake, &topic, 2),
    );
    stop(a);
    assert_table_files_valid(&lake);
    assert_lake_exact(&lake, &t);
    assert_dead_letters(&brokers, &dlq, &t);
    eprintln!(
        "disk fault via {}: {} failed commit attempts logged",
        if fault.tmpfs {
            "full tmpfs"
        } else {
            "read-only directories"
        },
        count_lines(&log, "batch commit failed; retrying")
    );
}

pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Poison messages — invalid UTF-8, 3 MB, 100,000 levels of nesting, a number beyond u64,
/// duplicate keys, an empty and a missing key — among valid traffic with retries: each lands in
/// the dead-letter topic with a precise reason, the valid events are exact, the metrics say
/// what happened, and the aggregator's peak memory stays bounded.
#[test]
fn poison_messages_are_dead_lettered_precisely_and_metrics_tell() {
    let brokers = brokers();
    let topic = unique_topic("poison");
    let dlq = format!("{topic}.dlq");
    runtime().block_on(create_topics(&brokers, &[(&topic, 2), (&dlq, 1)]));
    let mut t: Traffic = traffic(20_000, 51, 0.0, 0.05);
    let good = String::from_utf8(t.valid[0].clone()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let tenant = v["subject"].as_str().unwrap().to_string();
    let with_id = |id: &str, s: &str| s.replace(v["id"].as_str().unwrap(), id);
    let mut utf8 = with_id("p-utf8", &good).into_bytes();
    let at = utf8.windows(9).position(|w| w == b"\"model\":\"").unwrap() + 9;
    utf8[at] = 0xff;
    let nested = with_id("p-nest", &good).replacen(
        "\"data\":{",
        &format!(
            "\"data\":{{\"agent\":{}{},",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
        1,
    );
    let big_number = with_id("p-num", &good).replacen(
        &format!("\"input_tokens\":{}", v["data"]["usage"]["input_tokens"]),
        "\"input_tokens\":18446744073709551616",
        1,
    );
    let dup_keys = with_id("p-dup", &good).replacen("{", "{\"subject\":\"other\",", 1);
    // (key, payload, expected dead-letter reason, words the error must contain)
    let poison: Vec<(Option<String>, Vec<u8>, &str, &str)> = vec![
        (Some(tenant.clone()), utf8, "utf8", "not UTF-8"),
        // 3 MB: three times the limit. (10 MB is covered by the decoder's unit test: tansu 0.6
        // stalls a fetch on any message over about 4 MB, whatever the consumer asks for.)
        (
            Some(tenant.clone()),
            [b"{\"x\":\"".as_slice(), &vec![b'a'; 3 << 20], b"\"}"].concat(),
            "too_large",
            "over the 1048576-byte limit",
        ),
        (Some(tenant.clone()), nested.into_bytes(), "data.agent", ""),
        (
            Some(tenant.clone()),
            big_number.into_bytes(),
            "data.usage.input_tokens",
            "input_tokens",
        ),
        (
            Some(tenant.clone()),
            dup_keys.into_bytes(),
            "json",
            "duplicate field `subject`",
        ),
        (
            Some(String::new()),
            with_id("p-emptykey", &good).into_bytes(),
            "key",
            "must equal subject",
        ),
        (
            None,
            with_id("p-nokey", &good).into_bytes(),
            "key",
            "key is required",
        ),
    ];
    // Spread them through the stream.
    let step = t.messages.len() / (poison.len() + 1);
    for (i, (k, p, _, _)) in poison.iter().enumerate().rev() {
        t.messages.insert((i + 1) * step, (k.clone(), p.clone()));
        t.dead.insert(p.clone());
    }
    let sent = AtomicU64::new(0);
    runtime()
        .block_on(tokenmeter_ingest::produce::produce_all(
            &brokers,
            &topic,
            &[("message.max.bytes".into(), "33554432".into())],
            t.messages.clone(),
            &sent,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let group = format!("{topic}-poison");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    args.extend([
        "--flush-max-messages",
        "4000",
        "--flush-interval",
        "1",
        "--metrics-addr",
        &addr,
    ]);
    let log = dir.path().join("aggregate.log");
    let a = Aggregator::start(&args, &[], &log);
    wait_logged(
        "the aggregator to catch up",
        Duration::from_secs(300),
        &log,
        || caught_up(&brokers, &lake, &topic, 2),
    );
    // Lag is measured on the progress tick (5 s): wait for a scrape that shows it at zero.
    let mut text = String::new();
    wait_for("metrics to show zero lag", Duration::from_secs(30), || {
        text = scrape(port);
        text.contains("tokenmeter_consumer_lag{partition=\"0\"} 0")
            && text.contains("tokenmeter_consumer_lag{partition=\"1\"} 0")
    });
    a.signal(libc::SIGTERM);
    let (status, peak_kib) = a.wait_rss(Duration::from_secs(120));
    assert!(status.success(), "{}", tail(&log, 20));

    assert_lake_exact(&lake, &t);
    let dead = read_topic(&brokers, &dlq, 1);
    for (_, payload, reason, words) in &poison {
        let m = dead
            .iter()
            .find(|m| &m.payload == payload)
            .unwrap_or_else(|| panic!("poison message ({reason}) not in the dead-letter topic"));
        assert_eq!(
            m.headers["tokenmeter.error.reason"], *reason,
            "{:?}",
            m.headers
        );
        assert!(
            m.headers["tokenmeter.error"].contains(words),
            "{:?}",
            m.headers
        );
        assert!(m.headers["tokenmeter.error"].len() < 600, "{:?}", m.headers);
    }
    let distinct: HashSet<_> = dead.iter().map(|m| m.payload.clone()).collect();
    assert!(distinct == t.dead);

    let m = |n: &str| metric(&text, n).unwrap_or_else(|| panic!("{n} missing:\n{text}"));
    assert_eq!(m("tokenmeter_events_in_total"), t.messages.len() as u64);
    assert_eq!(m("tokenmeter_events_accepted_total"), t.valid.len() as u64);
    assert_eq!(m("tokenmeter_events_duplicate_total"), t.retries as u64);
    assert_eq!(
        m("tokenmeter_dlq_total{reason=\"conflict\"}"),
        t.conflicts as u64
    );
    assert_eq!(m("tokenmeter_dlq_total{reason=\"too_large\"}"), 1);
    assert_eq!(m("tokenmeter_dlq_total{reason=\"key\"}"), 2);
    assert!(m("tokenmeter_flush_seconds_count") >= 5);
    assert_eq!(
        m("tokenmeter_flush_seconds_bucket{le=\"+Inf\"}"),
        m("tokenmeter_flush_seconds_count")
    );
    assert!(peak_kib < 600 * 1024, "peak RSS {} MiB", peak_kib / 1024);
    eprintln!("poison run: peak RSS {} MiB", peak_kib / 1024);
}

/// Events whose hour was already flushed still count: a second run brings events 1 hour, 25
/// hours and 30 days late; they land in new rollup files and the day totals of the cost report
/// (from rollups and from raw events) include them.
#[test]
fn late_events_land_in_new_rollup_files_and_reports_include_them() {
    use tokenmeter_query::reports::{ReportParams, Source, cost_report};
    let brokers = brokers();
    let topic = unique_topic("late");
    let dlq = format!("{topic}.dlq");
    let rt = runtime();
    rt.block_on(create_topics(&brokers, &[(&topic, 1), (&dlq, 1)]));
    let t = traffic(400, 61, 0.0, 0.0);
    let at = |i: usize, time: &str, id: &str| -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&t.valid[i]).unwrap();
        v["time"] = time.into();
        v["id"] = id.into();
        serde_json::to_vec(&v).unwrap()
    };
    let key = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p).unwrap()["subject"]
            .as_str()
            .map(str::to_string)
    };
    let on_time: Vec<Vec<u8>> = vec![
        at(0, "2026-10-01T12:10:00Z", "late-0"),
        at(1, "2026-10-30T11:20:00Z", "late-1"),
        at(2, "2026-10-31T11:05:00Z", "late-2"),
        at(3, "2026-10-31T12:30:00Z", "late-3"),
    ];
    let late: Vec<Vec<u8>> = vec![
        at(4, "2026-10-31T11:40:00Z", "late-4"), // 1 hour late
        at(5, "2026-10-30T11:50:00Z", "late-5"), // 25 hours late
        at(6, "2026-10-01T12:45:00Z", "late-6"), // 30 days late
    ];
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_string();
    let group = format!("{topic}-late");
    let mut args = aggregate_args(&brokers, &topic, &dlq, &lake_s, &group);
    args.extend(["--exit-when-idle", "2"]);
    let log = dir.path().join("aggregate.log");
    let rollup_files = || -> usize { crate::support::files_under(&lake.join("rollups")).len() };
    let mut all = Vec::new();
    for (round, batch) in [on_time, late].into_iter().enumerate() {
        let sent = AtomicU64::new(0);
        rt.block_on(tokenmeter_ingest::produce::produce_all(
            &brokers,
            &topic,
            &[],
            batch.iter().map(|p| (key(p), p.clone())),
            &sent,
        ))
        .unwrap();
        let before = rollup_files();
        let s = Aggregator::start(&args, &[], &log).wait(Duration::from_secs(120));
        assert!(s.success(), "{}", tail(&log, 20));
        assert!(
            rollup_files() > before,
            "round {round} wrote no new rollup files"
        );
        all.extend(batch);
    }
    // Oracle: per UTC day, per tenant, computed from the JSON.
    let book = Book::load(PRICES);
    let mut by_day: BTreeMap<chrono::NaiveDate, Vec<Vec<u8>>> = BTreeMap::new();
    for p in &all {
        let v: serde_json::Value = serde_json::from_slice(p).unwrap();
        let day = chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap())
            .unwrap()
            .date_naive();
        by_day.entry(day).or_default().push(p.clone());
    }
    let ctx = rt.block_on(tokenmeter_query::open_catalog(&lake)).unwrap();
    for (day, payloads) in &by_day {
        let want = normalized(expected(payloads, &book));
        for source in [Source::Rollups, Source::Raw] {
            let params = ReportParams {
                from: *day,
                to: day.succ_opt().unwrap(),
                tenant: None,
                tz: chrono_tz::UTC,
                source,
            };
            let batches = rt.block_on(cost_report(&ctx, &params)).unwrap();
            let got = report_totals(&batches);
            let want_t: BTreeMap<String, (i64, rust_decimal::Decimal)> = want
                .iter()
                .map(|(k, e)| (k.clone(), (e.tokens.iter().sum(), e.cost)))
                .collect();
            assert_eq!(got, want_t, "{day} from {source:?}");
        }
    }
}

/// tenant → (tokens, cost) summed over a cost report's rows.
fn report_totals(
    batches: &[datafusion::arrow::array::RecordBatch],
) -> BTreeMap<String, (i64, rust_decimal::Decimal)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
    let mut out: BTreeMap<String, (i64, rust_decimal::Decimal)> = BTreeMap::new();
    for b in batches {
        let tenant = b.column_by_name("tenant_id").unwrap().as_string::<i32>();
        let tokens = b
            .column_by_name("tokens")
            .unwrap()
            .as_primitive::<Int64Type>();
        let cost = b.column_by_name("cost").unwrap();
        let cost = cost.as_primitive::<Decimal128Type>();
        for r in 0..b.num_rows() {
            let e = out.entry(tenant.value(r).to_string()).or_default();
            e.0 += tokens.value(r);
            if !cost.is_null(r) {
                e.1 +=
                    rust_decimal::Decimal::from_i128_with_scale(cost.value(r), cost.scale() as u32);
            }
        }
    }
    for e in out.values_mut() {
        e.1 = e.1.normalize();
    }
    out
}
