//! Deterministic, realistic usage traffic for demos, tests and benchmarks.
//!
//! Tenants are Zipf-distributed; calls are a provider/model mix with cache hits and reasoning
//! tokens; agent runs (plan → act/tool … → evaluate) carry large contexts (some over 50k tokens)
//! and take a share of tokens that rises over the days of the window. A requested fraction of
//! messages is invalid in varied ways. The same seed gives the same bytes. `GenConfig::agents`
//! sets how many (tenant, agent) pairs occur, for runs at a given agent cardinality.
//!
//! [`Truth`] holds the expected totals per tenant and bucket, counted from the generated events
//! themselves (not from the aggregator's code paths).
//!
//! Not here: Kafka (see [`crate::produce`]), pricing (the truth's cost uses a price book only
//! when one is given).

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use serde::Serialize;
use std::collections::BTreeMap;
use tokenmeter_aggregate::PriceBook;
use tokenmeter_aggregate::prices::format_money;
use tokenmeter_schemas::{Agent, AgentStep, Buckets, Status, Usage, UsageEvent, event::EventData};

/// Settings of a generated stream.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub events: u64,
    pub tenants: u32,
    pub seed: u64,
    pub invalid_fraction: f64,
    /// Start of the time window (UTC).
    pub start: DateTime<Utc>,
    /// Length of the window in days.
    pub days: u32,
    /// Distinct agents over all tenants (agent ids are per tenant, so this counts (tenant,
    /// agent) pairs), shared out in proportion to the tenants' traffic, with agent runs made
    /// frequent enough (about three per agent) that nearly all of them occur; `None`: 5 to 24
    /// per tenant, and agent runs at their usual single-digit share.
    pub agents: Option<u32>,
}

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            events: 200_000,
            tenants: 50,
            seed: 42,
            invalid_fraction: 0.0,
            start: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
            days: 30,
            agents: None,
        }
    }
}

/// One generated message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Kafka key: the tenant id.
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// The valid event, or `None` for a deliberately invalid message.
    pub event: Option<UsageEvent>,
}

struct Model {
    provider: &'static str,
    model: &'static str,
    weight: f64,
    reasoning: bool,
    cache_write: bool,
}

/// The model mix. The last one is absent from the example price books, so its usage shows as
/// unpriced in reports.
const MODELS: &[Model] = &[
    Model {
        provider: "openai",
        model: "gpt-4.1",
        weight: 18.0,
        reasoning: false,
        cache_write: false,
    },
    Model {
        provider: "openai",
        model: "gpt-4.1-mini",
        weight: 20.0,
        reasoning: false,
        cache_write: false,
    },
    Model {
        provider: "openai",
        model: "o4-mini",
        weight: 8.0,
        reasoning: true,
        cache_write: false,
    },
    Model {
        provider: "anthropic",
        model: "claude-sonnet-4",
        weight: 15.0,
        reasoning: true,
        cache_write: true,
    },
    Model {
        provider: "anthropic",
        model: "claude-3-5-haiku",
        weight: 8.0,
        reasoning: false,
        cache_write: true,
    },
    Model {
        provider: "google",
        model: "gemini-2.5-pro",
        weight: 6.0,
        reasoning: true,
        cache_write: false,
    },
    Model {
        provider: "google",
        model: "gemini-2.5-flash",
        weight: 10.0,
        reasoning: true,
        cache_write: false,
    },
    Model {
        provider: "deepseek",
        model: "deepseek-chat",
        weight: 8.0,
        reasoning: false,
        cache_write: false,
    },
    Model {
        provider: "deepseek",
        model: "deepseek-reasoner",
        weight: 5.0,
        reasoning: true,
        cache_write: false,
    },
    Model {
        provider: "moonshot",
        model: "kimi-k2",
        weight: 0.5,
        reasoning: false,
        cache_write: false,
    },
];

const NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "tyrell",
    "cyberdyne",
    "soylent",
];
const REGIONS: &[&str] = &["cn-sh-1", "cn-bj-2", "us-east-1", "eu-west-1"];
const CHANNELS: &[&str] = &["api", "feishu", "slack", "web", "wecom"];

fn tenant_name(i: u32) -> String {
    match NAMES.get(i as usize) {
        Some(n) => (*n).to_string(),
        None => format!("tenant-{i:04}"),
    }
}

/// A deterministic generator of messages; iterate it.
pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    zipf: Zipf<f64>,
    chat_in: LogNormal<f64>,
    chat_out: LogNormal<f64>,
    ctx: LogNormal<f64>,
    produced: u64,
    /// Pending steps of the current agent run.
    run: Vec<UsageEvent>,
    run_seq: u64,
    total_weight: f64,
    /// Agents per tenant with `GenConfig::agents`; empty otherwise.
    agent_pools: Vec<u32>,
    /// Factor on the chance that an event starts an agent run (1 without `GenConfig::agents`).
    run_factor: f64,
}

/// Chance that an event starts an agent run: `RUN_START` at the window's start, rising by
/// `RUN_START_RISE` to its end.
const RUN_START: f64 = 0.0003;
const RUN_START_RISE: f64 = 0.0012;

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let zipf = Zipf::new(cfg.tenants.max(1) as f64, 1.1).expect("valid zipf");
        let (agent_pools, run_factor) = match cfg.agents {
            None => (Vec::new(), 1.0),
            Some(agents) => {
                // Tenant t (0-based) draws Zipf value t + 1: weight (t + 1)^-1.1.
                let n = cfg.tenants.max(1);
                let w: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-1.1)).collect();
                let total: f64 = w.iter().sum();
                let pools = w
                    .iter()
                    .map(|x| ((agents as f64 * x / total).round() as u32).max(1))
                    .collect();
                let runs = 3.0 * agents as f64;
                let mean_start = RUN_START + RUN_START_RISE / 2.0;
                let factor = (runs / (mean_start * cfg.events.max(1) as f64)).max(1.0);
                (pools, factor)
            }
        };
        Self {
            rng,
            zipf,
            chat_in: LogNormal::new(7.2, 1.0).expect("valid"), // median ~1.3k tokens
            chat_out: LogNormal::new(5.5, 0.9).expect("valid"), // median ~250 tokens
            ctx: LogNormal::new(9.8, 0.6).expect("valid"),     // median ~18k, tail past 50k
            produced: 0,
            run: Vec::new(),
            run_seq: 0,
            total_weight: MODELS.iter().map(|m| m.weight).sum(),
            agent_pools,
            run_factor,
            cfg,
        }
    }

    fn pick_model(&mut self) -> &'static Model {
        let mut x = self.rng.random::<f64>() * self.total_weight;
        for m in MODELS {
            if x < m.weight {
                return m;
            }
            x -= m.weight;
        }
        &MODELS[0]
    }

    fn time_at(&mut self, i: u64) -> DateTime<Utc> {
        let span_ms = self.cfg.days as i64 * 86_400_000;
        let base = (i as f64 / self.cfg.events.max(1) as f64 * span_ms as f64) as i64;
        let jitter = self.rng.random_range(0..60_000);
        self.cfg.start + Duration::milliseconds((base + jitter).min(span_ms - 1))
    }

    fn usage(&mut self, m: &Model, input: u64, output: u64, cache_frac: f64, write: bool) -> Usage {
        let input = input.clamp(1, 2_000_000);
        let output = output.clamp(1, 200_000);
        let cache_read = (input as f64 * cache_frac) as u64;
        let cache_creation = if write && m.cache_write {
            (input - cache_read) / 2
        } else {
            0
        };
        let reasoning = if m.reasoning {
            (output as f64 * self.rng.random_range(0.2..0.7)) as u64
        } else {
            0
        };
        Usage {
            input_tokens: input,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_creation,
            output_tokens: output,
            reasoning_output_tokens: reasoning,
        }
    }

    fn event(
        &mut self,
        i: u64,
        tenant: u32,
        time: DateTime<Utc>,
        m: &Model,
        usage: Usage,
        agent: Option<Agent>,
    ) -> UsageEvent {
        let error = self.rng.random::<f64>() < 0.01;
        UsageEvent {
            id: format!("evt-{:x}-{i:010}", self.cfg.seed),
            source: format!("gateway/{}", REGIONS[(tenant as usize) % REGIONS.len()]),
            time: time.fixed_offset(),
            tenant_id: tenant_name(tenant),
            data: EventData {
                provider: m.provider.into(),
                model: m.model.into(),
                operation: Some("chat".into()),
                agent,
                channel: Some(CHANNELS[self.rng.random_range(0..CHANNELS.len())].into()),
                api_key_id: Some(format!("key-{}-{}", tenant, self.rng.random_range(0..3))),
                user_id: Some(format!("u-{}", self.rng.random_range(0..50))),
                usage,
                latency_ms: Some(self.rng.random_range(200..30_000)),
                status: if error { Status::Error } else { Status::Ok },
            },
        }
    }

    /// Start an agent run: plan, 1–4 × (act, tool), evaluate; contexts grow step by step.
    fn start_run(&mut self, first_index: u64, tenant: u32, time: DateTime<Utc>) {
        self.run_seq += 1;
        let m = self.pick_model();
        let pool = match self.agent_pools.get(tenant as usize) {
            Some(&p) => p,
            None => 5 + tenant % 20,
        };
        let agent_id = format!("lobster-{}", self.rng.random_range(0..pool));
        let run_id = format!("run-{:x}-{}", self.cfg.seed, self.run_seq);
        let mut steps = vec![AgentStep::Plan];
        for _ in 0..self.rng.random_range(1..=4) {
            steps.push(AgentStep::Act);
            steps.push(AgentStep::Tool);
        }
        steps.push(AgentStep::Evaluate);
        let mut ctx = self.ctx.sample(&mut self.rng) as u64;
        let mut t = time;
        for (k, step) in steps.into_iter().enumerate() {
            let out = self.chat_out.sample(&mut self.rng) as u64 * 2;
            let cache = if k == 0 {
                0.0
            } else {
                self.rng.random_range(0.5..0.9)
            };
            let usage = self.usage(m, ctx, out, cache, k == 0);
            let agent = Agent {
                id: agent_id.clone(),
                name: Some(format!("{agent_id}-helper")),
                run_id: Some(run_id.clone()),
                step: Some(step),
            };
            let e = self.event(first_index + k as u64, tenant, t, m, usage, Some(agent));
            self.run.push(e);
            ctx += out + self.rng.random_range(500..4000);
            t += Duration::milliseconds(self.rng.random_range(500..5000));
        }
        self.run.reverse(); // popped from the back in order
    }

    fn invalid(&mut self, i: u64, tenant: u32, time: DateTime<Utc>) -> Message {
        let m = self.pick_model();
        let usage = self.usage(m, 1000, 100, 0.0, false);
        let good = self.event(i, tenant, time, m, usage, None);
        let key = Some(good.tenant_id.clone());
        let json = good.to_json();
        let payload: Vec<u8> = match self.rng.random_range(0..10) {
            0 => json.as_bytes()[..json.len() / 2].to_vec(),
            1 => json
                .replace("\"specversion\":\"1.0\"", "\"specversion\":\"0.3\"")
                .into_bytes(),
            2 => json
                .replace("\"input_tokens\":1000", "\"input_tokens\":-1000")
                .into_bytes(),
            3 => json
                .replace(
                    "\"cache_read_input_tokens\":0",
                    "\"cache_read_input_tokens\":5000",
                )
                .into_bytes(),
            4 => json
                .replace(
                    "\"output_tokens\":100",
                    "\"output_tokens\":100,\"reasoning_output_tokens\":101",
                )
                .replace("\"reasoning_output_tokens\":0,", "")
                .into_bytes(),
            5 => json
                .replace(
                    &format!("\"subject\":\"{}\"", good.tenant_id),
                    "\"subject\":\"acme corp\"",
                )
                .into_bytes(),
            6 => {
                let t = good
                    .time
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                json.replace(&t, "2099-01-01T00:00:00Z").into_bytes()
            }
            7 => {
                let mut b = json.into_bytes();
                let pos = b
                    .windows(9)
                    .position(|w| w == b"\"model\":\"")
                    .map_or(10, |p| p + 9);
                b[pos] = 0xff;
                b
            }
            8 => json
                .replace("\"provider\":\"", "\"provider\":\"\",\"x\":\"")
                .into_bytes(),
            _ => json
                .replace("\"type\":\"gen_ai.usage\"", "\"type\":\"gen_ai.chat\"")
                .into_bytes(),
        };
        Message {
            key,
            payload,
            event: None,
        }
    }
}

impl Iterator for Generator {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if self.produced >= self.cfg.events {
            return None;
        }
        let i = self.produced;
        self.produced += 1;
        if let Some(e) = self.run.pop() {
            return Some(Message {
                key: Some(e.tenant_id.clone()),
                payload: e.to_json().into_bytes(),
                event: Some(e),
            });
        }
        let tenant = (self.zipf.sample(&mut self.rng) as u32).saturating_sub(1);
        let time = self.time_at(i);
        if self.rng.random::<f64>() < self.cfg.invalid_fraction {
            return Some(self.invalid(i, tenant, time));
        }
        // Agent runs take a rising share of tokens over the window.
        let frac =
            (time - self.cfg.start).num_seconds() as f64 / (self.cfg.days.max(1) as f64 * 86_400.0);
        if self.rng.random::<f64>() < (RUN_START + RUN_START_RISE * frac) * self.run_factor {
            self.start_run(i, tenant, time);
            let e = self.run.pop().expect("a run has steps");
            return Some(Message {
                key: Some(e.tenant_id.clone()),
                payload: e.to_json().into_bytes(),
                event: Some(e),
            });
        }
        let m = self.pick_model();
        let input = self.chat_in.sample(&mut self.rng) as u64;
        let output = self.chat_out.sample(&mut self.rng) as u64;
        let cache = if self.rng.random::<f64>() < 0.3 {
            self.rng.random_range(0.2..0.8)
        } else {
            0.0
        };
        let write = self.rng.random::<f64>() < 0.05;
        let usage = self.usage(m, input, output, cache, write);
        let e = self.event(i, tenant, time, m, usage, None);
        Some(Message {
            key: Some(e.tenant_id.clone()),
            payload: e.to_json().into_bytes(),
            event: Some(e),
        })
    }
}

/// Expected totals of one tenant.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TenantTruth {
    pub requests: u64,
    pub agent_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub agent_tokens: u64,
    /// Billable buckets by name.
    pub tokens: BTreeMap<String, u64>,
    /// Cost of the priced events as a decimal string (only with a price book).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<String>,
    pub unpriced_requests: u64,
}

/// Expected totals of a generated stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Truth {
    pub messages: u64,
    pub valid: u64,
    pub invalid: u64,
    pub currency: Option<String>,
    pub tenants: BTreeMap<String, TenantTruth>,
    #[serde(skip)]
    costs: BTreeMap<String, i128>,
}

impl Truth {
    /// Count one message; `book` prices valid events.
    pub fn add(&mut self, m: &Message, book: Option<&PriceBook>) {
        self.messages += 1;
        let Some(e) = &m.event else {
            self.invalid += 1;
            return;
        };
        self.valid += 1;
        let t = self.tenants.entry(e.tenant_id.clone()).or_default();
        let u = &e.data.usage;
        t.requests += 1;
        t.input_tokens += u.input_tokens;
        t.output_tokens += u.output_tokens;
        if e.is_agent() {
            t.agent_requests += 1;
            t.agent_tokens += u.input_tokens + u.output_tokens;
        }
        let b: Buckets = u.buckets();
        for (name, v) in Buckets::NAMES.iter().zip(b.as_array()) {
            *t.tokens.entry((*name).to_string()).or_default() += v;
        }
        if let Some(book) = book {
            self.currency = Some(book.currency.clone());
            match book.lookup(&e.data.provider, &e.data.model, e.time_utc()) {
                Some(p) => {
                    let c: i128 = p.rates.costs(&b).iter().sum();
                    *self.costs.entry(e.tenant_id.clone()).or_default() += c;
                }
                None => t.unpriced_requests += 1,
            }
            let total = self.costs.get(&e.tenant_id).copied().unwrap_or(0);
            self.tenants.get_mut(&e.tenant_id).expect("inserted").cost = Some(format_money(total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmeter_schemas::{DecodeOptions, decode_event};

    #[test]
    fn agents_are_shared_out_and_nearly_all_occur() {
        let cfg = GenConfig {
            events: 100_000,
            tenants: 200,
            agents: Some(3_000),
            ..Default::default()
        };
        let g = Generator::new(cfg.clone());
        let pools: u32 = g.agent_pools.iter().sum();
        // Rounding each tenant's share (at least one agent each) stays near the total.
        assert!(
            (2_900..=3_300).contains(&pools),
            "{pools} agents in the pools"
        );
        // The busiest tenant has the most agents.
        assert_eq!(g.agent_pools.iter().max(), g.agent_pools.first());
        let pairs: std::collections::HashSet<(String, String)> = g
            .filter_map(|m| m.event)
            .filter_map(|e| Some((e.tenant_id.clone(), e.data.agent?.id)))
            .collect();
        assert!(
            pairs.len() as f64 > 0.85 * pools as f64 && pairs.len() as u32 <= pools,
            "{} of {pools} agents occur",
            pairs.len()
        );
    }

    #[test]
    fn same_seed_same_bytes_and_every_valid_message_decodes() {
        let cfg = GenConfig {
            events: 5_000,
            invalid_fraction: 0.05,
            ..Default::default()
        };
        let a: Vec<_> = Generator::new(cfg.clone()).collect();
        let b: Vec<_> = Generator::new(cfg).collect();
        assert_eq!(
            a.iter().map(|m| &m.payload).collect::<Vec<_>>(),
            b.iter().map(|m| &m.payload).collect::<Vec<_>>()
        );
        let mut invalid = 0;
        for m in &a {
            let decoded = decode_event(&m.payload, &DecodeOptions::default());
            match &m.event {
                Some(e) => assert_eq!(&decoded.unwrap(), e),
                None => {
                    invalid += 1;
                    assert!(decoded.is_err(), "{}", String::from_utf8_lossy(&m.payload));
                }
            }
        }
        assert!(
            (150..350).contains(&invalid),
            "{invalid} invalid of 5000 at 5%"
        );
        assert!(a.iter().any(|m| {
            m.event
                .as_ref()
                .is_some_and(|e| e.data.usage.input_tokens > 50_000)
        }));
        assert!(
            a.iter()
                .any(|m| m.event.as_ref().is_some_and(UsageEvent::is_agent))
        );
    }
}
