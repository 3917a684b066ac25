//! Dedupe of gateway retries — the pure core: the event key, the content fingerprint, and the
//! per-partition index of keys the aggregator has accepted.
//!
//! A gateway that retries sends the same event (same CloudEvents `source` and `id`) again,
//! possibly weeks later. The aggregator keeps one [`DedupeIndex`] per Kafka partition it owns.
//! The index is organised by the event's UTC date, the unit in which the raw-event table is
//! partitioned on disk: a date's key set is loaded from the committed raw events of that date
//! and partition ([`crate::lake::Lake::load_keys`]) the first time an event of that date is
//! seen, and dropped again (least recently used first) when the index holds more than its key
//! budget. So memory is bounded by the budget, and the horizon is the whole lake: a retry of an
//! event of any stored date is found, at the price of one load of that date.
//!
//! Invariant (ARCHITECTURE.md, "Retry dedupe"): the index holds only keys of committed raw
//! events plus keys of the partition's uncommitted batches: the open one and, while the
//! aggregator commits it, the one before ([`DedupeIndex::seal`]). Dates that hold keys of an
//! uncommitted batch are never evicted; the whole index is dropped with the batches when the
//! partition is revoked or the process dies, and is rebuilt from committed files only.
//!
//! Keys are 128-bit XXH3 hashes of (source, id) (a false "duplicate" needs a 128-bit collision:
//! about 10^-18 for 10^10 events); fingerprints are 64-bit XXH3 hashes of the billing content
//! ([`Content`]), hashed field by field in a fixed order. The lake does not store them: every
//! hashed field is a raw-event column, so the index recomputes them from the stored rows.
//!
//! Not here: I/O (the lake reads the keys back) and Kafka (the aggregator routes conflicts to
//! the dead-letter topic).

use chrono::NaiveDate;
use std::collections::HashMap;
use std::hash::Hasher;
use tokenmeter_schemas::UsageEvent;
use twox_hash::{XxHash3_64, XxHash3_128};

/// The identity of an event across retries: a hash of its `source` and `id`.
pub type Key = u128;

/// [`Key`] of an event with this CloudEvents `source` and `id`.
pub fn key(source: &str, id: &str) -> Key {
    let mut h = XxHash3_128::new();
    h.write(&(source.len() as u64).to_le_bytes());
    h.write(source.as_bytes());
    h.write(id.as_bytes());
    h.finish_128()
}

/// The event's [`Key`].
pub fn key_of(e: &UsageEvent) -> Key {
    key(&e.source, &e.id)
}

fn put_str(h: &mut XxHash3_64, s: &str) {
    h.write(&(s.len() as u64).to_le_bytes());
    h.write(s.as_bytes());
}

fn put_opt(h: &mut XxHash3_64, s: Option<&str>) {
    match s {
        None => h.write(&[0]),
        Some(s) => {
            h.write(&[1]);
            put_str(h, s);
        }
    }
}

/// What the fingerprint hashes, borrowed: everything billing reads from an event. Built from a
/// decoded event ([`Content::of`]) or from a stored raw-event row
/// ([`crate::record::StoredContent::content`]); the two give the same fingerprint for the same
/// event, which is why the lake does not store it (a test in `record` holds them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content<'a> {
    pub id: &'a str,
    pub source: &'a str,
    /// The instant of `time` in microseconds since the epoch (not its written offset).
    pub time_micros: i64,
    pub tenant_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub operation: Option<&'a str>,
    pub agent: Option<AgentContent<'a>>,
    pub channel: Option<&'a str>,
    pub api_key_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    /// Reported counts in hash order: input, cache read, cache creation, output, reasoning.
    pub tokens: [i64; 5],
    /// As stored: [`crate::record::stored_latency`].
    pub latency_ms: Option<i64>,
    pub status: &'a str,
}

/// The agent fields of [`Content`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentContent<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub step: Option<&'a str>,
}

impl<'a> Content<'a> {
    /// The content of a decoded event.
    pub fn of(e: &'a UsageEvent) -> Self {
        let d = &e.data;
        let u = &d.usage;
        Content {
            id: &e.id,
            source: &e.source,
            time_micros: e.time.timestamp_micros(),
            tenant_id: &e.tenant_id,
            provider: &d.provider,
            model: &d.model,
            operation: d.operation.as_deref(),
            agent: d.agent.as_ref().map(|a| AgentContent {
                id: &a.id,
                name: a.name.as_deref(),
                run_id: a.run_id.as_deref(),
                step: a.step.map(|s| s.as_str()),
            }),
            channel: d.channel.as_deref(),
            api_key_id: d.api_key_id.as_deref(),
            user_id: d.user_id.as_deref(),
            // Token counts are at most `MAX_TOKENS` (validated on decode): exact as i64.
            tokens: [
                u.input_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens,
                u.output_tokens,
                u.reasoning_output_tokens,
            ]
            .map(|v| v as i64),
            latency_ms: d.latency_ms.map(crate::record::stored_latency),
            status: d.status.as_str(),
        }
    }

    /// The 64-bit fingerprint: every field, in a fixed order, strings length-prefixed and
    /// options tagged, so that no two contents share their hashed bytes.
    pub fn fingerprint(&self) -> u64 {
        let mut h = XxHash3_64::new();
        put_str(&mut h, self.id);
        put_str(&mut h, self.source);
        h.write(&self.time_micros.to_le_bytes());
        put_str(&mut h, self.tenant_id);
        put_str(&mut h, self.provider);
        put_str(&mut h, self.model);
        put_opt(&mut h, self.operation);
        match &self.agent {
            None => h.write(&[0]),
            Some(a) => {
                h.write(&[1]);
                put_str(&mut h, a.id);
                put_opt(&mut h, a.name);
                put_opt(&mut h, a.run_id);
                put_opt(&mut h, a.step);
            }
        }
        put_opt(&mut h, self.channel);
        put_opt(&mut h, self.api_key_id);
        put_opt(&mut h, self.user_id);
        for v in self.tokens {
            h.write(&v.to_le_bytes());
        }
        match self.latency_ms {
            None => h.write(&[0]),
            Some(v) => {
                h.write(&[1]);
                h.write(&v.to_le_bytes());
            }
        }
        put_str(&mut h, self.status);
        h.finish()
    }
}

/// A 64-bit hash of everything billing reads from the event ([`Content`]): id, source, the
/// instant of `time` (not its written offset), subject, and every `data` field. Two deliveries
/// of one event have the same fingerprint whatever their JSON key order or whitespace.
pub fn fingerprint(e: &UsageEvent) -> u64 {
    Content::of(e).fingerprint()
}

/// What the index says of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen: accepted, and now recorded.
    New,
    /// Seen with the same content: a retry, to be counted and dropped.
    Duplicate,
    /// Seen with other content: to the dead-letter topic, never replacing the first.
    Conflict { stored: u64 },
}

#[derive(Debug, Default)]
struct DateSet {
    keys: HashMap<Key, u64>,
    /// Logical time of the last use, for LRU eviction.
    used: u64,
    /// The newest batch ([`DedupeIndex::seal`]'s number) that added keys to this date, 0 for
    /// none: not evictable until that batch is [`DedupeIndex::committed`].
    pending: u64,
}

/// The dedupe index of one Kafka partition. See the module docs.
#[derive(Debug)]
pub struct DedupeIndex {
    dates: HashMap<NaiveDate, DateSet>,
    keys: usize,
    max_keys: usize,
    clock: u64,
    evictions: u64,
    /// Number of the open batch: the one [`DedupeIndex::check`] adds keys to.
    open: u64,
}

impl DedupeIndex {
    /// An empty index that keeps at most about `max_keys` keys in memory.
    pub fn new(max_keys: usize) -> Self {
        Self {
            dates: HashMap::new(),
            keys: 0,
            max_keys,
            clock: 0,
            evictions: 0,
            open: 1,
        }
    }

    /// Whether the date's key set is in memory; if not, load it with [`DedupeIndex::load`]
    /// before [`DedupeIndex::check`]ing an event of that date.
    pub fn is_loaded(&self, date: NaiveDate) -> bool {
        self.dates.contains_key(&date)
    }

    /// Install the key set of `date` read from the committed raw events.
    pub fn load(&mut self, date: NaiveDate, keys: impl IntoIterator<Item = (Key, u64)>) {
        self.clock += 1;
        let set: HashMap<Key, u64> = keys.into_iter().collect();
        self.keys += set.len();
        let old = self.dates.insert(
            date,
            DateSet {
                keys: set,
                used: self.clock,
                pending: 0,
            },
        );
        if let Some(old) = old {
            self.keys -= old.keys.len();
        }
        self.evict(Some(date));
    }

    /// Look an event up and, if new, record it as part of the open batch. The date must be
    /// loaded.
    pub fn check(&mut self, date: NaiveDate, key: Key, fingerprint: u64) -> Verdict {
        self.clock += 1;
        let set = self
            .dates
            .get_mut(&date)
            .expect("DedupeIndex::check on a date that is not loaded");
        set.used = self.clock;
        match set.keys.get(&key) {
            Some(&fp) if fp == fingerprint => Verdict::Duplicate,
            Some(&fp) => Verdict::Conflict { stored: fp },
            None => {
                set.keys.insert(key, fingerprint);
                set.pending = self.open;
                self.keys += 1;
                Verdict::New
            }
        }
    }

    /// Close the open batch (it goes to be committed) and open the next; returns the closed
    /// batch's number, for [`DedupeIndex::committed`]. Keys of the closed batch stay in the
    /// index, pending, so the next batch's retries of them are found while it commits.
    pub fn seal(&mut self) -> u64 {
        self.open += 1;
        self.open - 1
    }

    /// The sealed batch `batch` (and every one before it) is now committed: dates that hold no
    /// keys of a later batch become evictable.
    pub fn committed(&mut self, batch: u64) {
        for s in self.dates.values_mut() {
            if s.pending <= batch {
                s.pending = 0;
            }
        }
        self.evict(None);
    }

    /// Drop least recently used dates (never pending ones, never `keep`) until within budget.
    fn evict(&mut self, keep: Option<NaiveDate>) {
        while self.keys > self.max_keys {
            let victim = self
                .dates
                .iter()
                .filter(|(d, s)| s.pending == 0 && Some(**d) != keep)
                .min_by_key(|(_, s)| s.used)
                .map(|(d, _)| *d);
            let Some(d) = victim else { break };
            let s = self.dates.remove(&d).expect("victim exists");
            self.keys -= s.keys.len();
            self.evictions += 1;
        }
    }

    /// Keys in memory.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether no key is in memory.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Dates in memory.
    pub fn dates_loaded(&self) -> usize {
        self.dates.len()
    }

    /// Date sets dropped to stay within budget so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 10, day).unwrap()
    }

    #[test]
    fn new_duplicate_conflict() {
        let mut ix = DedupeIndex::new(100);
        ix.load(d(1), []);
        let k = key("gw", "e1");
        assert_eq!(ix.check(d(1), k, 7), Verdict::New);
        assert_eq!(ix.check(d(1), k, 7), Verdict::Duplicate);
        assert_eq!(ix.check(d(1), k, 8), Verdict::Conflict { stored: 7 });
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn keys_separate_source_and_id() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_ne!(key("gw", "1"), key("gw", "2"));
        assert_eq!(key("gw", "1"), key("gw", "1"));
    }

    #[test]
    fn pending_dates_survive_eviction_and_committed_ones_go_lru_first() {
        let mut ix = DedupeIndex::new(3);
        ix.load(d(1), [(1, 1), (2, 2)]);
        ix.load(d(2), [(3, 3)]);
        assert_eq!(ix.check(d(2), 4, 4), Verdict::New); // 4 keys > 3, but d(2) is pending
        // d(1) is the least recently used, not pending: evicted by the next load.
        ix.load(d(3), []);
        assert!(!ix.is_loaded(d(1)));
        assert!(ix.is_loaded(d(2)));
        assert_eq!(ix.len(), 2);
        ix.load(d(4), [(9, 9), (10, 10)]);
        // d(2) pending: kept though over budget; d(3) evicted (empty, not pending).
        assert!(ix.is_loaded(d(2)));
        let sealed = ix.seal();
        ix.committed(sealed);
        assert!(ix.len() <= 3, "{}", ix.len());
        assert!(ix.is_loaded(d(4)), "the most recently loaded date stays");
    }

    #[test]
    fn a_committing_batch_does_not_release_the_open_batchs_dates() {
        let mut ix = DedupeIndex::new(1);
        ix.load(d(1), []);
        assert_eq!(ix.check(d(1), 1, 1), Verdict::New);
        let first = ix.seal(); // batch 1 goes to be committed; batch 2 is open
        ix.load(d(2), []);
        assert_eq!(ix.check(d(2), 2, 2), Verdict::New);
        // A retry of batch 1's event, seen while batch 1 commits, is still a duplicate.
        assert_eq!(ix.check(d(1), 1, 1), Verdict::Duplicate);
        ix.committed(first);
        // d(1) holds only committed keys now: evictable. d(2) holds batch 2's: kept.
        ix.load(d(3), []);
        assert!(!ix.is_loaded(d(1)));
        assert!(ix.is_loaded(d(2)), "a date of the open batch was evicted");
        let second = ix.seal();
        ix.committed(second);
        ix.load(d(4), [(9, 9)]);
        assert!(!ix.is_loaded(d(2)));
    }
}
