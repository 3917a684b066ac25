//! Producing usage events to Kafka the way a gateway should: idempotent producer, keyed by tenant
//! id, every delivery awaited and counted. Used by `tokenmeter produce`, `generate --brokers` and
//! the demo.

use crate::kafka::producer_config;
use crate::{Error, Result};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The tenant id of a JSON line, to key it by; `None` when the line has no readable `subject`.
pub fn key_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Subject {
        subject: Option<String>,
    }
    serde_json::from_slice::<Subject>(line).ok()?.subject
}

/// Produce `(key, payload)` messages to `topic`, awaiting every delivery. `sent` counts
/// acknowledged messages as they land (for progress bars). Returns the number delivered.
pub async fn produce_all(
    brokers: &str,
    topic: &str,
    extra: &[(String, String)],
    messages: impl IntoIterator<Item = (Option<String>, Vec<u8>)>,
    sent: &AtomicU64,
) -> Result<u64> {
    let producer: FutureProducer = producer_config(brokers, extra)
        .create()
        .map_err(Error::kafka("creating the producer"))?;
    let mut inflight = VecDeque::new();
    let mut delivered = 0u64;
    let max_inflight = 50_000;
    for (key, payload) in messages {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(&payload);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        let fut = loop {
            match producer.send_result(record) {
                Ok(f) => break f,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    // Let deliveries complete before queueing more.
                    if let Some(f) = inflight.pop_front() {
                        delivered += await_delivery(f, sent).await?;
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err((e, _)) => {
                    return Err(Error::Kafka {
                        context: format!("producing to {topic}"),
                        source: e,
                    });
                }
            }
        };
        inflight.push_back(fut);
        if inflight.len() >= max_inflight
            && let Some(f) = inflight.pop_front()
        {
            delivered += await_delivery(f, sent).await?;
        }
    }
    for f in inflight {
        delivered += await_delivery(f, sent).await?;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(Error::kafka("flushing the producer"))?;
    Ok(delivered)
}

async fn await_delivery(f: rdkafka::producer::DeliveryFuture, sent: &AtomicU64) -> Result<u64> {
    match f.await {
        Ok(Ok(_)) => {
            sent.fetch_add(1, Relaxed);
            Ok(1)
        }
        Ok(Err((e, _))) => Err(Error::Kafka {
            context: "delivering a message".into(),
            source: e,
        }),
        Err(_) => Err(Error::Config(
            "the producer was dropped before delivering".into(),
        )),
    }
}

/// Read a JSON-lines file into keyed messages (empty lines skipped).
pub fn read_jsonl(path: &std::path::Path) -> Result<Vec<(Option<String>, Vec<u8>)>> {
    let bytes = std::fs::read(path).map_err(Error::io(format!("reading {}", path.display())))?;
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| (key_of(l), l.to_vec()))
        .collect())
}
