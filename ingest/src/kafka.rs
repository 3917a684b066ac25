//! Kafka client configuration shared by the consumer and producers, with secrets redacted from
//! anything that is logged, and topic creation for the bench and the tests.

use crate::{Error, Result};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::time::{Duration, Instant};

/// Build a client config for `brokers` with `extra` settings (later ones win).
pub fn client_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// Producer settings: idempotent, all replicas acknowledge.
pub fn producer_config(brokers: &str, extra: &[(String, String)]) -> ClientConfig {
    let mut c = client_config(brokers, &[]);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "300000");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// The settings as `key=value` lines with secrets (passwords, keys, tokens) redacted.
pub fn redacted(c: &ClientConfig) -> String {
    let mut kv: Vec<_> = c
        .config_map()
        .iter()
        .map(|(k, v)| {
            let secret = ["password", "secret", "token", "key.pem", "private"]
                .iter()
                .any(|s| k.contains(s));
            format!("{k}={}", if secret { "[redacted]" } else { v })
        })
        .collect();
    kv.sort();
    kv.join(" ")
}

/// Create `topics` (name, partitions) on the broker at `brokers` and wait until its metadata
/// shows every partition (up to 30 s). A topic that exists already is an error. For the bench
/// and the tests; the aggregator never creates topics.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[])
        .create()
        .map_err(Error::kafka("creating the admin client"))?;
    let new: Vec<_> = topics
        .iter()
        .map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(&new, &opts)
        .await
        .map_err(Error::kafka(format!("creating topics on {brokers}")))?
    {
        r.map_err(|(t, e)| Error::Config(format!("creating topic {t} on {brokers}: {e}")))?;
    }
    let started = Instant::now();
    for (t, n) in topics {
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .map_err(Error::kafka(format!("reading the metadata of {t}")))?;
            if md.topics().first().map(|x| x.partitions().len() as i32) == Some(*n) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(Error::Config(format!(
                    "topic {t} was created on {brokers} but its {n} partitions did not show in the metadata within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
