//! Kafka client configuration shared by the consumer and producers, with secrets redacted from
//! anything that is logged.

use rdkafka::ClientConfig;

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
