//! The aggregator's counters and their Prometheus text exposition, served over plain HTTP by
//! [`serve`] (`tokenmeter aggregate --metrics-addr HOST:PORT`, scrape `GET /metrics`).
//!
//! Counters of outcomes (accepted, duplicates, dead letters by reason) move when a batch
//! commits, so they count each message once even when an uncommitted batch is dropped and
//! replayed after a rebalance; `consumed` counts every delivery, replays included.
//! [`peak_rss_kib`] reads the process's peak resident set (`aggregate --summary-json`, the bench).
//!
//! Not here: what the numbers mean for billing (reports read the lake, never these counters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

/// Upper bounds (seconds) of the flush-latency histogram buckets.
pub const FLUSH_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Counters of a running aggregator, readable from another task (progress, metrics).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages consumed (including replays of uncommitted batches after a rebalance).
    pub consumed: AtomicU64,
    /// Valid, new events committed to the lake.
    pub committed_events: AtomicU64,
    /// Messages committed to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Retries of already stored events, dropped (counted when their batch commits).
    pub duplicates: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Batch commits that failed and were retried.
    pub commit_failures: AtomicU64,
    /// Messages behind the end of the assigned partitions at the last progress check.
    pub lag: AtomicU64,
    /// Events with no matching price (stored with null cost).
    pub unpriced: AtomicU64,
    /// Date key sets loaded from the lake into the dedupe index.
    pub dedupe_loads: AtomicU64,
    /// Dedupe keys held in memory across partitions.
    pub dedupe_keys: AtomicU64,
    /// Dead letters committed, by reason label.
    pub dlq_by_reason: Mutex<BTreeMap<String, u64>>,
    /// Consumer lag per partition at the last progress check.
    pub partition_lag: Mutex<BTreeMap<i32, u64>>,
    /// ClickHouse sink: successful INSERTs, rows inserted, failed INSERT attempts.
    pub ch_inserts: AtomicU64,
    pub ch_rows: AtomicU64,
    pub ch_failures: AtomicU64,
    /// ClickHouse sink: committed lake batches not yet in ClickHouse.
    pub ch_pending_batches: AtomicU64,
    /// ClickHouse sink: offsets between the lake's commits and ClickHouse's, over the
    /// partitions with batches still to ship.
    pub ch_lag_messages: AtomicU64,
    /// Whether a ClickHouse sink is configured (its metrics are only exposed then).
    pub ch_enabled: std::sync::atomic::AtomicBool,
    /// Budget alerts: produced to the alerts topic by this process, by threshold.
    pub alerts_by_threshold: Mutex<BTreeMap<u32, u64>>,
    /// Budget alerts: webhook attempts that failed (retried with backoff).
    pub alert_webhook_failures: AtomicU64,
    /// Budget alerts: recorded but not yet known to be on the alerts topic.
    pub alerts_unsent: AtomicU64,
    /// Budget alerts: on the topic, webhook delivery pending.
    pub alerts_webhook_pending: AtomicU64,
    /// Whether budget alerts are on (their metrics are only exposed then).
    pub alerts_enabled: std::sync::atomic::AtomicBool,
    flush_buckets: [AtomicU64; FLUSH_BUCKETS.len()],
    flush_count: AtomicU64,
    flush_micros: AtomicU64,
}

impl Metrics {
    /// Record one batch flush (dead-letter deliveries awaited, lake commit) that took `d`.
    pub fn observe_flush(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (b, le) in self.flush_buckets.iter().zip(FLUSH_BUCKETS) {
            if s <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.flush_count.fetch_add(1, Relaxed);
        self.flush_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Add committed dead letters by reason.
    pub fn add_dlq(&self, by_reason: &BTreeMap<String, u64>) {
        let mut m = self.dlq_by_reason.lock().expect("metrics lock");
        for (r, n) in by_reason {
            *m.entry(r.clone()).or_default() += n;
        }
    }

    /// Count an alert produced to the alerts topic.
    pub fn add_alert(&self, threshold: u32) {
        *self
            .alerts_by_threshold
            .lock()
            .expect("metrics lock")
            .entry(threshold)
            .or_default() += 1;
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "tokenmeter_events_in_total",
            "Messages consumed from the usage topic, replays after a rebalance included.",
            self.consumed.load(Relaxed),
        );
        counter(
            "tokenmeter_events_accepted_total",
            "Valid new events committed to the lake.",
            self.committed_events.load(Relaxed),
        );
        counter(
            "tokenmeter_events_duplicate_total",
            "Gateway retries of already stored events, dropped.",
            self.duplicates.load(Relaxed),
        );
        counter(
            "tokenmeter_events_unpriced_total",
            "Events no price covers (stored with null cost).",
            self.unpriced.load(Relaxed),
        );
        counter(
            "tokenmeter_batches_committed_total",
            "Batches committed to the lake.",
            self.batches.load(Relaxed),
        );
        counter(
            "tokenmeter_commit_failures_total",
            "Batch commits that failed and were retried.",
            self.commit_failures.load(Relaxed),
        );
        counter(
            "tokenmeter_dedupe_loads_total",
            "Date key sets read from the lake into the dedupe index.",
            self.dedupe_loads.load(Relaxed),
        );
        if self.ch_enabled.load(Relaxed) {
            counter(
                "tokenmeter_clickhouse_inserts_total",
                "INSERTs of rollup rows into ClickHouse that succeeded.",
                self.ch_inserts.load(Relaxed),
            );
            counter(
                "tokenmeter_clickhouse_rows_total",
                "Rollup rows inserted into ClickHouse.",
                self.ch_rows.load(Relaxed),
            );
            counter(
                "tokenmeter_clickhouse_insert_failures_total",
                "ClickHouse INSERT attempts that failed (retried with backoff).",
                self.ch_failures.load(Relaxed),
            );
            let _ = writeln!(
                o,
                "# HELP tokenmeter_clickhouse_pending_batches Committed lake batches not yet in ClickHouse.\n# TYPE tokenmeter_clickhouse_pending_batches gauge\ntokenmeter_clickhouse_pending_batches {}",
                self.ch_pending_batches.load(Relaxed)
            );
            let _ = writeln!(
                o,
                "# HELP tokenmeter_clickhouse_lag_messages Kafka offsets committed to the lake but not yet to ClickHouse.\n# TYPE tokenmeter_clickhouse_lag_messages gauge\ntokenmeter_clickhouse_lag_messages {}",
                self.ch_lag_messages.load(Relaxed)
            );
        }
        if self.alerts_enabled.load(Relaxed) {
            let _ = writeln!(
                o,
                "# HELP tokenmeter_alerts_total Budget alerts produced to the alerts topic, by threshold percent.\n# TYPE tokenmeter_alerts_total counter"
            );
            for (t, n) in self
                .alerts_by_threshold
                .lock()
                .expect("metrics lock")
                .iter()
            {
                let _ = writeln!(o, "tokenmeter_alerts_total{{threshold=\"{t}\"}} {n}");
            }
            let _ = writeln!(
                o,
                "# HELP tokenmeter_alert_webhook_failures_total Budget alert webhook attempts that failed (retried with backoff).\n# TYPE tokenmeter_alert_webhook_failures_total counter\ntokenmeter_alert_webhook_failures_total {}",
                self.alert_webhook_failures.load(Relaxed)
            );
            let _ = writeln!(
                o,
                "# HELP tokenmeter_alerts_unsent Budget alerts recorded but not yet on the alerts topic.\n# TYPE tokenmeter_alerts_unsent gauge\ntokenmeter_alerts_unsent {}\n# HELP tokenmeter_alerts_webhook_pending Budget alerts on the topic whose webhook delivery is pending.\n# TYPE tokenmeter_alerts_webhook_pending gauge\ntokenmeter_alerts_webhook_pending {}",
                self.alerts_unsent.load(Relaxed),
                self.alerts_webhook_pending.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP tokenmeter_dedupe_keys Dedupe keys held in memory.\n# TYPE tokenmeter_dedupe_keys gauge\ntokenmeter_dedupe_keys {}",
            self.dedupe_keys.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP tokenmeter_dlq_total Messages committed to the dead-letter topic, by reason.\n# TYPE tokenmeter_dlq_total counter"
        );
        for (r, n) in self.dlq_by_reason.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "tokenmeter_dlq_total{{reason=\"{}\"}} {n}", escape(r));
        }
        let _ = writeln!(
            o,
            "# HELP tokenmeter_consumer_lag Messages between the aggregator's position and the end of the partition.\n# TYPE tokenmeter_consumer_lag gauge"
        );
        for (p, n) in self.partition_lag.lock().expect("metrics lock").iter() {
            let _ = writeln!(o, "tokenmeter_consumer_lag{{partition=\"{p}\"}} {n}");
        }
        let _ = writeln!(
            o,
            "# HELP tokenmeter_flush_seconds Time to flush a batch: dead letters delivered and the lake commit done.\n# TYPE tokenmeter_flush_seconds histogram"
        );
        for (b, le) in self.flush_buckets.iter().zip(FLUSH_BUCKETS) {
            let _ = writeln!(
                o,
                "tokenmeter_flush_seconds_bucket{{le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.flush_count.load(Relaxed);
        let _ = writeln!(
            o,
            "tokenmeter_flush_seconds_bucket{{le=\"+Inf\"}} {count}\ntokenmeter_flush_seconds_sum {}\ntokenmeter_flush_seconds_count {count}",
            self.flush_micros.load(Relaxed) as f64 / 1e6
        );
        o
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve `GET /metrics` on `addr` until the task is dropped. Binds before returning, so a bad
/// address is an error at start, not a log line later.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics at http://{}/metrics", listener.local_addr()?);
    Ok(async move {
        loop {
            let (mut sock, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                // One request per connection: read the head (bounded), answer, close.
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while n < buf.len() {
                    match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body, ctype) = if head.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    (
                        "200 OK",
                        m.render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    )
                } else {
                    (
                        "404 Not Found",
                        "tokenmeter serves only GET /metrics\n".to_string(),
                        "text/plain; charset=utf-8",
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = sock.write_all(resp.as_bytes()).await {
                    debug!(%peer, error = %e, "metrics: write failed");
                }
                let _ = sock.shutdown().await;
            });
        }
    })
}

/// Peak resident set size of this whole process so far, in KiB: Linux's `VmHWM` from
/// `/proc/self/status`, the figure `getrusage(RUSAGE_SELF).ru_maxrss` reports, read without
/// `unsafe`. `None` where there is no such file (not Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_labels_are_escaped() {
        let m = Metrics::default();
        m.observe_flush(Duration::from_millis(30));
        m.observe_flush(Duration::from_secs(3));
        m.add_dlq(&BTreeMap::from([("a\"b".to_string(), 2)]));
        let t = m.render();
        assert!(
            t.contains("tokenmeter_flush_seconds_bucket{le=\"0.025\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("tokenmeter_flush_seconds_bucket{le=\"0.05\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("tokenmeter_flush_seconds_bucket{le=\"5\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("tokenmeter_flush_seconds_count 2\n"), "{t}");
        assert!(
            t.contains("tokenmeter_dlq_total{reason=\"a\\\"b\"} 2\n"),
            "{t}"
        );
    }
}
