//! The hourly rollup fold: pure, order-independent aggregation of priced events into rows keyed
//! by (hour, tenant_id, provider, model, is_agent, agent_id, currency).
//!
//! Not here: I/O. The lake writes the folded rows of each batch as one rollup file per date.

use crate::prices::Money;
use crate::record::PricedEvent;
use std::collections::BTreeMap;

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The rollup grain. `agent_id` present means an agent workload; `currency` absent means unpriced.
///
/// Keys order by hour first (cheap to compare while folding); files are written in
/// [`by_tenant`] order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    /// Start of the UTC hour, microseconds since the epoch.
    pub hour_micros: i64,
    pub tenant_id: String,
    pub provider: String,
    pub model: String,
    pub agent_id: Option<String>,
    pub currency: Option<String>,
}

/// Sums of one rollup row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupValue {
    pub requests: i64,
    pub errors: i64,
    /// input, output, cache_read_input, cache_creation_input, reasoning_output — as reported.
    pub reported: [i64; 5],
    /// Billable buckets, `Buckets::NAMES` order.
    pub tokens: [i64; 5],
    /// Cost per bucket at scale 12 (zero for unpriced rows, which store null).
    pub costs: [Money; 5],
}

impl RollupValue {
    /// Add another partial sum.
    pub fn merge(&mut self, o: &RollupValue) {
        self.requests += o.requests;
        self.errors += o.errors;
        for i in 0..5 {
            self.reported[i] += o.reported[i];
            self.tokens[i] += o.tokens[i];
            self.costs[i] += o.costs[i];
        }
    }
}

/// Floor a UTC timestamp in microseconds to its hour.
pub fn hour_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR
}

/// The rollup key and one-event value of `e`.
pub fn key_value(e: &PricedEvent) -> (RollupKey, RollupValue) {
    let d = &e.event.data;
    let key = RollupKey {
        hour_micros: hour_of(e.time.timestamp_micros()),
        tenant_id: e.event.tenant_id.clone(),
        provider: d.provider.clone(),
        model: d.model.clone(),
        agent_id: d.agent.as_ref().map(|a| a.id.clone()),
        currency: e.price.as_ref().map(|p| p.currency.clone()),
    };
    let value = RollupValue {
        requests: 1,
        errors: i64::from(d.status == tokenmeter_schemas::Status::Error),
        reported: e.reported(),
        tokens: e.buckets.as_array().map(|v| v as i64),
        costs: e.price.as_ref().map_or([0; 5], |p| p.costs),
    };
    (key, value)
}

/// Fold events into rollup rows, sorted by key.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a PricedEvent>,
) -> BTreeMap<RollupKey, RollupValue> {
    let mut rows: BTreeMap<RollupKey, RollupValue> = BTreeMap::new();
    for e in events {
        let (k, v) = key_value(e);
        rows.entry(k).or_default().merge(&v);
    }
    rows
}

/// Folded rows in the order rollup files hold them: by tenant, then hour, provider, model,
/// agent and currency. A file keeps each tenant's rows together, so its pages' min/max
/// statistics let a one-tenant query skip the other tenants.
pub fn by_tenant(rows: &BTreeMap<RollupKey, RollupValue>) -> Vec<(&RollupKey, &RollupValue)> {
    let mut out: Vec<_> = rows.iter().collect();
    // Stable, and the map's order is (hour, tenant, …): sorting by tenant alone gives
    // (tenant, hour, …).
    out.sort_by(|a, b| a.0.tenant_id.cmp(&b.0.tenant_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PriceBook;
    use tokenmeter_schemas::{DecodeOptions, decode_event};

    fn ev(id: &str, time: &str, agent: bool, input: u64, output: u64) -> PricedEvent {
        let agent = if agent {
            r#","agent":{"id":"a1","step":"act"}"#
        } else {
            ""
        };
        let json = format!(
            r#"{{"specversion":"1.0","type":"gen_ai.usage","id":"{id}","source":"s","time":"{time}","subject":"t1","data":{{"provider":"p","model":"m","usage":{{"input_tokens":{input},"cache_read_input_tokens":1,"output_tokens":{output},"reasoning_output_tokens":2}}{agent}}}}}"#
        );
        let e = decode_event(json.as_bytes(), &DecodeOptions::default()).unwrap();
        let book = PriceBook::parse(
            "currency = \"USD\"\n[[price]]\nprovider = \"p\"\nmodel = \"m\"\neffective_from = \"2025-01-01T00:00:00Z\"\ninput = \"1\"\noutput = \"2\"\ncache_read = \"0.1\"\n",
            "t",
        )
        .unwrap();
        PricedEvent::new(e, &book, 0, 0)
    }

    #[test]
    fn fold_groups_by_hour_and_agent_and_sums_exactly() {
        let events = [
            ev("a", "2026-01-01T10:00:00Z", false, 10, 5),
            ev("b", "2026-01-01T10:59:59.999Z", false, 20, 6),
            ev("c", "2026-01-01T11:00:00Z", false, 30, 7),
            ev("d", "2026-01-01T10:30:00+01:00", true, 40, 8), // 09:30 UTC
        ];
        let rows = fold(&events);
        assert_eq!(rows.len(), 3);
        let ten = rows
            .iter()
            .find(|(k, _)| {
                k.hour_micros == hour_of(events[0].time.timestamp_micros()) && k.agent_id.is_none()
            })
            .unwrap()
            .1;
        assert_eq!(ten.requests, 2);
        assert_eq!(ten.reported[0], 30);
        assert_eq!(ten.tokens, [28, 2, 0, 7, 4]);
        // cost: 28×1 + 2×0.1 + 7×2 + 4×2 per million, at scale 12 = ×10^6 micro-units.
        assert_eq!(
            ten.costs.iter().sum::<i128>(),
            (28 * 1_000_000 + 2 * 100_000 + 11 * 2_000_000) as i128
        );
        // Fold is order-independent.
        let mut rev: Vec<_> = events.iter().collect();
        rev.reverse();
        assert_eq!(fold(rev), rows);
        // Totals are conserved.
        let total: i64 = rows.values().map(|v| v.tokens.iter().sum::<i64>()).sum();
        assert_eq!(
            total,
            events.iter().map(|e| e.buckets.total() as i64).sum::<i64>()
        );
    }
}
