//! Access to the real services `tests/services.sh up` starts (the tansu broker), plus what the
//! reliability tests do to processes: run `tokenmeter aggregate` as a child process, kill it,
//! start private broker instances, and check the lake's files from outside.
//!
//! A missing service is a test failure with advice, never a skip.

use crate::support::files_under;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The test broker's address, from `TOKENMETER_TEST_BROKERS`.
pub fn brokers() -> String {
    std::env::var("TOKENMETER_TEST_BROKERS").unwrap_or_else(|_| {
        panic!(
            "TOKENMETER_TEST_BROKERS is not set: these tests need the real broker. Start it with \
             `eval \"$(tests/services.sh up)\"` (or run the whole suite with `bash tests/run.sh`)."
        )
    })
}

/// The tansu binary, for tests that run a private broker (restart tests).
pub fn tansu_bin() -> PathBuf {
    std::env::var_os("TOKENMETER_TEST_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "TOKENMETER_TEST_TANSU is not set: run `eval \"$(tests/services.sh up)\"` first."
            )
        })
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create topics and wait until the broker reports all their partitions.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    tokenmeter_ingest::kafka::create_topics(brokers, topics)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A plain consumer for metadata, watermarks and reading topics.
pub fn consumer(brokers: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

/// High watermarks (message counts) per partition, as fetch responses report them.
///
/// Not `fetch_watermarks` (ListOffsets): tansu 0.6 answers ListOffsets(latest) with the base
/// offset of its newest record batch plus one, short by the rest of that batch, so a reader
/// trusting it misses the last messages. Fetches are exact: read from just before the listed end
/// until every partition reports its end, and take the position reached there.
pub fn high_watermarks(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    use rdkafka::TopicPartitionList;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "watermarks")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut start = BTreeMap::new();
    for p in 0..partitions {
        let (_, listed) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        start.insert(p, (listed - 1).max(0));
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(start[&p]))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let t = Instant::now();
    while (at_end.len() as i32) < partitions {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{topic}: only partitions {at_end:?} reached their end in 60 s"
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading the end of {topic}: {e}"),
            Some(Ok(_)) | None => {}
        }
    }
    let position = c.position().unwrap();
    (0..partitions)
        .map(|p| {
            let end = match position.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                // Nothing read: the partition is empty (a listed end above 0 has a message
                // just below it).
                Some(rdkafka::Offset::Invalid) => start[&p],
                other => panic!("{topic}[{p}]: no position at its end: {other:?}"),
            };
            (p, end)
        })
        .collect()
}

/// Poll `cond` every 100 ms until it holds; panic with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait_for`], with the tail of a process log in the panic message.
pub fn wait_logged(what: &str, limit: Duration, log: &Path, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; log tail:\n{}",
            tail(log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `committed_through` of each partition's state file in the lake (-1 when absent).
pub fn committed(lake: &Path, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    (0..partitions)
        .map(|p| {
            let path = lake.join(format!("_state/{topic}/p{p}.json"));
            let c = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["committed_through"].as_i64())
                .unwrap_or(-1);
            (p, c)
        })
        .collect()
}

/// Whether the lake has committed every message the topic holds.
pub fn caught_up(brokers: &str, lake: &Path, topic: &str, partitions: i32) -> bool {
    let high = high_watermarks(brokers, topic, partitions);
    committed(lake, topic, partitions)
        .iter()
        .all(|(p, c)| c + 1 >= high[p])
}

/// Files under the table directories (`events/`, `rollups/`) — what queries list. Each must be
/// a complete Parquet file (footer and all row groups readable) and none may be temporary.
pub fn assert_table_files_valid(lake: &Path) {
    for table in ["events", "rollups"] {
        for p in files_under(&lake.join(table)) {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                name.ends_with(".parquet") && !name.contains(".tmp"),
                "a non-Parquet or temporary file is visible to queries: {}",
                p.display()
            );
            let f = std::fs::File::open(&p).unwrap();
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap_or_else(|e| panic!("torn file visible to queries: {}: {e}", p.display()))
                .build()
                .unwrap();
            for b in r {
                b.unwrap_or_else(|e| panic!("torn file {}: {e}", p.display()));
            }
        }
    }
}

/// Offset ranges of the raw-event files per partition; ranges of one partition never overlap
/// (two writers of one partition would leave overlapping or repeated ranges).
pub fn assert_ranges_disjoint(lake: &Path, topic: &str) -> usize {
    use tokenmeter_schemas::layout::FileId;
    let mut ranges: BTreeMap<i32, std::collections::BTreeSet<(i64, i64)>> = BTreeMap::new();
    for p in files_under(&lake.join("events")) {
        if let Some(id) = FileId::parse(&p.file_name().unwrap().to_string_lossy())
            && id.topic == topic
        {
            ranges
                .entry(id.partition)
                .or_default()
                .insert((id.first, id.last));
        }
    }
    let mut n = 0;
    for (p, rs) in &ranges {
        let mut prev = -1i64;
        for (first, last) in rs {
            assert!(
                *first > prev,
                "partition {p}: batch {first}..={last} overlaps the batch ending at {prev}: two writers?"
            );
            prev = *last;
            n += 1;
        }
    }
    n
}

/// A `tokenmeter aggregate` child process whose log goes to a file.
pub struct Aggregator {
    pub child: Child,
    pub log: PathBuf,
}

impl Aggregator {
    /// Start `tokenmeter aggregate ARGS` with extra environment variables.
    pub fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Aggregator {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut c = Command::new(env!("CARGO_BIN_EXE_tokenmeter"));
        c.arg("aggregate")
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in env {
            c.env(k, v);
        }
        Aggregator {
            child: c.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid and a signal number; no memory is shared.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap()
    }

    /// Wait for exit, at most `limit`; SIGKILL and panic beyond it.
    pub fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if t.elapsed() > limit {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "aggregator did not exit within {limit:?}; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for exit, at most `limit`; SIGKILL beyond it.
    pub fn wait_or_kill(mut self, limit: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9()
    }

    /// Wait for exit and return its peak resident set size in KiB (wait4's rusage).
    pub fn wait_rss(self, limit: Duration) -> (std::process::ExitStatus, i64) {
        let pid = self.pid();
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of the plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let t = Instant::now();
        loop {
            // SAFETY: wait4 writes into the two out-pointers, which point at live locals.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                use std::os::unix::process::ExitStatusExt;
                std::mem::forget(self); // reaped here; Child must not wait again
                return (std::process::ExitStatus::from_raw(status), ru.ru_maxrss);
            }
            assert!(r == 0, "wait4 failed");
            if t.elapsed() > limit {
                self.signal(libc::SIGKILL);
                panic!(
                    "aggregator did not exit within {limit:?}: {}",
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(f) = std::fs::File::open(path) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Count lines of a log containing `needle`.
pub fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| l.contains(needle)).count())
        .unwrap_or(0)
}

impl Drop for Aggregator {
    /// A test that fails half-way must not leave its aggregator running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private tansu broker (its own port and sqlite file), for tests that stop the broker.
pub struct PrivateBroker {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start(dir: &Path) -> PrivateBroker {
        let port = free_port();
        let mut b = PrivateBroker {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        b.restart();
        b
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and storage.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("the private broker's port", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL the broker.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One message read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Every message of every partition of `topic`, from the beginning to the current end.
pub fn read_topic(brokers: &str, topic: &str, partitions: i32) -> Vec<Read> {
    use rdkafka::TopicPartitionList;
    use rdkafka::message::{Headers, Message};
    let high = high_watermarks(brokers, topic, partitions);
    let c = consumer(brokers, &unique_topic("reader"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let total: i64 = high.values().sum();
    // Keyed by offset: a message delivered twice counts once, and the read ends only when
    // every offset below the high watermarks has been seen (a skipped batch times out).
    let mut out: BTreeMap<(i32, i64), Read> = BTreeMap::new();
    let t = Instant::now();
    while (out.len() as i64) < total {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "read {} of {total} offsets of {topic} in 120 s",
            out.len()
        );
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) if m.offset() < high[&m.partition()] => {
                let read = Read {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                out.insert((m.partition(), m.offset()), read);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out.into_values().collect()
}
