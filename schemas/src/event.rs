//! The usage event: its wire form (CloudEvents 1.0 structured JSON), decoding with errors that name
//! the field and the rule, validation, and the billable token buckets.
//!
//! Token semantics follow OpenTelemetry GenAI: `input_tokens` INCLUDES cache reads and cache
//! writes, `output_tokens` INCLUDES reasoning tokens. [`Usage::buckets`] splits them into five
//! disjoint billable buckets whose sum is exactly `input_tokens + output_tokens`.
//!
//! Not here: pricing, Kafka, storage.

use chrono::{DateTime, Duration, FixedOffset, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Largest token count a single event may carry in any usage field.
pub const MAX_TOKENS: u64 = 1_000_000_000;
/// Longest event id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest tenant id (`subject`), in characters.
pub const MAX_SUBJECT_CHARS: usize = 64;
/// Longest [`ValidationError::rule`], in characters. A rule quotes the offending value, and the
/// value is the sender's: a megabyte-long string must not become a megabyte-long dead-letter
/// header.
pub const MAX_RULE_CHARS: usize = 300;

/// Every path [`ValidationError::field`] can name. A path the sender made up (an unknown key,
/// an array index, an enum variant) is cut back to its longest prefix in this list, so the field
/// is always short and from a closed set: it becomes a dead-letter header and a metrics label.
pub const FIELD_PATHS: [&str; 26] = [
    "specversion",
    "type",
    "id",
    "source",
    "time",
    "subject",
    "data",
    "data.provider",
    "data.model",
    "data.operation",
    "data.agent",
    "data.agent.id",
    "data.agent.name",
    "data.agent.run_id",
    "data.agent.step",
    "data.channel",
    "data.api_key_id",
    "data.user_id",
    "data.usage",
    "data.usage.input_tokens",
    "data.usage.cache_read_input_tokens",
    "data.usage.cache_creation_input_tokens",
    "data.usage.output_tokens",
    "data.usage.reasoning_output_tokens",
    "data.latency_ms",
    "data.status",
];

/// Why a message is not a valid usage event: the field (a dotted path from the top of the JSON
/// document, empty for the whole message) and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {rule}", if field.is_empty() { "message" } else { field.as_str() })]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `data.usage.input_tokens`, one of
    /// [`FIELD_PATHS`]; empty for the message.
    pub field: String,
    /// The rule, in words, with the offending value where that helps; at most
    /// [`MAX_RULE_CHARS`] characters.
    pub rule: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: bounded(rule.into()),
        }
    }

    /// A short, stable label for metrics and dead-letter headers: `utf8`, `json`, `too_large`,
    /// or the field path.
    pub fn reason(&self) -> &str {
        if self.field.is_empty() {
            if self.rule.starts_with("not UTF-8") {
                "utf8"
            } else if self.rule.starts_with("message is") {
                "too_large"
            } else {
                "json"
            }
        } else {
            &self.field
        }
    }
}

/// Knobs of decoding that depend on the aggregator, not on the event.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// How far ahead of `now` an event's `time` may be.
    pub max_future_skew: Duration,
    /// The clock to compare with; `None` means the system clock at decode time.
    pub now: Option<DateTime<Utc>>,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
    /// The JSON parser of the fast path (a message that fails it is read again by serde_json,
    /// which names the field of the error, so the verdict and the message never depend on it).
    pub parser: JsonParser,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_future_skew: Duration::minutes(5),
            now: None,
            max_message_bytes: 1 << 20,
            parser: JsonParser::default(),
        }
    }
}

/// Which parser reads a message into the typed wire form first. Both deserialize the same serde
/// types, so they accept the same documents (`tests/fuzz_decode.rs` checks that they agree);
/// `tokenmeter bench` measures both on the same corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonParser {
    /// serde_json, without path tracking.
    #[default]
    SerdeJson,
    /// sonic-rs (SIMD).
    SonicRs,
}

/// The step of an agent run an LLM call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStep {
    Plan,
    Act,
    Evaluate,
    Tool,
    Other,
}

impl AgentStep {
    pub const ALL: [AgentStep; 5] = [
        AgentStep::Plan,
        AgentStep::Act,
        AgentStep::Evaluate,
        AgentStep::Tool,
        AgentStep::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStep::Plan => "plan",
            AgentStep::Act => "act",
            AgentStep::Evaluate => "evaluate",
            AgentStep::Tool => "tool",
            AgentStep::Other => "other",
        }
    }
}

/// Whether the LLM call succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// The agent that made the call; absent for a plain chat or API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<AgentStep>,
}

/// Token counts as the gateway reports them (OpenTelemetry GenAI semantics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// All input tokens, INCLUDING cache reads and cache writes.
    #[serde(deserialize_with = "token_count")]
    pub input_tokens: u64,
    #[serde(default, deserialize_with = "opt_token_count")]
    pub cache_read_input_tokens: u64,
    #[serde(default, deserialize_with = "opt_token_count")]
    pub cache_creation_input_tokens: u64,
    /// All output tokens, INCLUDING reasoning tokens.
    #[serde(deserialize_with = "token_count")]
    pub output_tokens: u64,
    #[serde(default, deserialize_with = "opt_token_count")]
    pub reasoning_output_tokens: u64,
}

/// The five disjoint billable buckets of one event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buckets {
    pub uncached_input: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Buckets {
    /// Bucket names as reports spell them (`token_type`), in [`Buckets::as_array`] order.
    pub const NAMES: [&'static str; 5] = [
        "uncached_input",
        "cache_read",
        "cache_write",
        "output",
        "reasoning",
    ];

    pub fn as_array(&self) -> [u64; 5] {
        [
            self.uncached_input,
            self.cache_read,
            self.cache_write,
            self.output,
            self.reasoning,
        ]
    }

    pub fn total(&self) -> u64 {
        self.as_array().iter().sum()
    }
}

impl Usage {
    /// Split the reported counts into billable buckets. Requires a validated `Usage` (cache
    /// counts within input, reasoning within output); saturates otherwise.
    pub fn buckets(&self) -> Buckets {
        Buckets {
            uncached_input: self
                .input_tokens
                .saturating_sub(self.cache_read_input_tokens)
                .saturating_sub(self.cache_creation_input_tokens),
            cache_read: self.cache_read_input_tokens,
            cache_write: self.cache_creation_input_tokens,
            output: self
                .output_tokens
                .saturating_sub(self.reasoning_output_tokens),
            reasoning: self.reasoning_output_tokens,
        }
    }
}

/// A valid usage event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// CloudEvents `id`; `(source, id)` identifies the event across gateway retries.
    pub id: String,
    pub source: String,
    /// Event time as sent, with its offset.
    pub time: DateTime<FixedOffset>,
    /// CloudEvents `subject`.
    pub tenant_id: String,
    pub data: EventData,
}

/// The `data` member of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub provider: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "opt_object"
    )]
    pub agent: Option<Agent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(deserialize_with = "object")]
    pub usage: Usage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "opt_status")]
    pub status: Status,
}

/// The CloudEvents envelope as it travels.
#[derive(Serialize, Deserialize)]
struct Wire {
    specversion: String,
    #[serde(rename = "type")]
    kind: String,
    id: String,
    source: String,
    time: String,
    subject: String,
    #[serde(deserialize_with = "object")]
    data: EventData,
}

/// Deserialize a struct from a JSON object only. (serde's derive also accepts an array, read
/// positionally; the contract, like its JSON Schema, does not.)
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

/// [`object`] for an optional member: absent or `null` is `None`.
fn opt_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    struct Obj<T>(T);
    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            object(d).map(Obj)
        }
    }
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
}

/// Deserialize a token count, rejecting anything but an integer in `0..=MAX_TOKENS` with a rule
/// that says so.
fn token_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "an integer in 0..={MAX_TOKENS}")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            if v > MAX_TOKENS {
                Err(E::custom(format_args!(
                    "must be an integer in 0..={MAX_TOKENS}, got {v}"
                )))
            } else {
                Ok(v)
            }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| {
                    E::custom(format_args!(
                        "must be an integer in 0..={MAX_TOKENS}, got {v}"
                    ))
                })
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // JSON Schema counts 1.0 as an integer; so does this.
            if v.fract() == 0.0 && (0.0..=MAX_TOKENS as f64).contains(&v) {
                return Ok(v as u64);
            }
            // serde_json reads an integer beyond i64/u64 as the nearest f64: printed in full,
            // 18446744073709551616 would read "18446744073709552000", a number nobody sent.
            // Scientific notation says "about" and keeps 1e30 as 1e30.
            if v.abs() >= 1e15 {
                Err(E::custom(format_args!(
                    "must be an integer in 0..={MAX_TOKENS}, got {v:e}"
                )))
            } else {
                Err(E::custom(format_args!(
                    "must be an integer in 0..={MAX_TOKENS}, got {v}"
                )))
            }
        }
    }
    d.deserialize_any(V)
}

/// An optional token count: absent or `null` is 0.
fn opt_token_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Tok(u64);
    impl<'de> Deserialize<'de> for Tok {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            token_count(d).map(Tok)
        }
    }
    Ok(Option::<Tok>::deserialize(d)?.map_or(0, |t| t.0))
}

/// An optional status: absent or `null` is `ok`.
fn opt_status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    Ok(Option::<Status>::deserialize(d)?.unwrap_or_default())
}

impl UsageEvent {
    /// Whether this is an agent workload (an `agent` member is present).
    pub fn is_agent(&self) -> bool {
        self.data.agent.is_some()
    }

    /// The event time in UTC.
    pub fn time_utc(&self) -> DateTime<Utc> {
        self.time.with_timezone(&Utc)
    }

    /// Encode as CloudEvents structured JSON, the form [`decode_event`] reads.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            specversion: "1.0".into(),
            kind: "gen_ai.usage".into(),
            id: self.id.clone(),
            source: self.source.clone(),
            time: self
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            subject: self.tenant_id.clone(),
            data: self.data.clone(),
        };
        serde_json::to_string(&wire).expect("an event always serializes")
    }

    /// Check every contract rule that decoding alone does not enforce.
    pub fn validate(&self, opts: &DecodeOptions) -> Result<(), ValidationError> {
        let id_chars = self.id.chars().count();
        if id_chars == 0 || id_chars > MAX_ID_CHARS {
            return Err(ValidationError::new(
                "id",
                format!("must be 1 to {MAX_ID_CHARS} characters, got {id_chars}"),
            ));
        }
        if self.source.is_empty() {
            return Err(ValidationError::new("source", "must not be empty"));
        }
        let subject_ok = !self.tenant_id.is_empty()
            && self.tenant_id.len() <= MAX_SUBJECT_CHARS
            && self
                .tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !subject_ok {
            return Err(ValidationError::new(
                "subject",
                format!(
                    "must be 1 to {MAX_SUBJECT_CHARS} characters of [A-Za-z0-9._:-], got {:?}",
                    truncate(&self.tenant_id)
                ),
            ));
        }
        let now = opts.now.unwrap_or_else(Utc::now);
        if self.time_utc() > now + opts.max_future_skew {
            return Err(ValidationError::new(
                "time",
                format!(
                    "must not be more than {}s ahead of the aggregator's clock ({}), got {}",
                    opts.max_future_skew.num_seconds(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    self.time.to_rfc3339()
                ),
            ));
        }
        let d = &self.data;
        if d.provider.is_empty() {
            return Err(ValidationError::new("data.provider", "must not be empty"));
        }
        if d.model.is_empty() {
            return Err(ValidationError::new("data.model", "must not be empty"));
        }
        let u = &d.usage;
        if u.cache_read_input_tokens + u.cache_creation_input_tokens > u.input_tokens {
            return Err(ValidationError::new(
                "data.usage.cache_read_input_tokens",
                format!(
                    "cache_read_input_tokens + cache_creation_input_tokens ({} + {}) must not exceed input_tokens ({}): input_tokens includes cached tokens",
                    u.cache_read_input_tokens, u.cache_creation_input_tokens, u.input_tokens
                ),
            ));
        }
        if u.reasoning_output_tokens > u.output_tokens {
            return Err(ValidationError::new(
                "data.usage.reasoning_output_tokens",
                format!(
                    "reasoning_output_tokens ({}) must not exceed output_tokens ({}): output_tokens includes reasoning",
                    u.reasoning_output_tokens, u.output_tokens
                ),
            ));
        }
        if let Some(agent) = &d.agent
            && agent.id.is_empty()
        {
            return Err(ValidationError::new(
                "data.agent.id",
                "must not be empty when agent is present",
            ));
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Decode and validate one Kafka message payload.
pub fn decode_event(bytes: &[u8], opts: &DecodeOptions) -> Result<UsageEvent, ValidationError> {
    if bytes.len() > opts.max_message_bytes {
        return Err(ValidationError::new(
            "",
            format!(
                "message is {} bytes, over the {}-byte limit",
                bytes.len(),
                opts.max_message_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ValidationError::new(
            "",
            format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()),
        )
    })?;
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(ValidationError::new(
            "",
            "not valid JSON for an event: a message must be one JSON object (CloudEvents structured mode)",
        ));
    }
    // Fast path: the typed form straight from the parser. Only a message it rejects pays for
    // serde_path_to_error, which records the path of every member it reads.
    let fast = match opts.parser {
        JsonParser::SerdeJson => serde_json::from_str::<Wire>(text).ok(),
        // sonic-rs 0.5 recurses without a limit when it skips an unknown member, so a deeply
        // nested one would overflow the stack (cloudwego/sonic-rs#232): such messages go to
        // serde_json, which stops at 128 levels with an error.
        JsonParser::SonicRs if nesting_within(text.as_bytes(), 64) => {
            sonic_rs::from_str::<Wire>(text).ok()
        }
        JsonParser::SonicRs => None,
    };
    let wire = match fast {
        Some(w) => w,
        None => wire_error(text)?,
    };
    from_wire(wire, opts)
}

/// Whether the arrays and objects of `json` nest at most `limit` deep (brackets inside strings
/// do not count). A linear scan, made for untrusted input before a recursive parser sees it.
fn nesting_within(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > limit {
                        return false;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    true
}

/// The wire form of a message the fast path rejected, read again with the path of every member
/// so that the error names the field: `Err` with the field and the rule (or, should serde_json
/// accept what the fast parser did not, the wire form after all).
fn wire_error(text: &str) -> Result<Wire, ValidationError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let wire: Wire = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = known_path(e.path());
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde names a missing field in the message and points the path at its parent.
        if let Some(rest) = msg.strip_prefix("missing field `")
            && let Some(name) = rest.split('`').next()
        {
            let field = if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            return ValidationError::new(field, "is required");
        }
        let rule = match inner.classify() {
            // Valid JSON (RFC 8259 sets no range), but beyond what serde_json can hold.
            serde_json::error::Category::Syntax if msg.starts_with("number out of range") => {
                "must be a number within the 64-bit floating-point range, got one out of range"
                    .to_string()
            }
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("not valid JSON: {msg}")
            }
            _ => strip_position(&msg),
        };
        ValidationError::new(path, rule)
    })?;
    // Trailing garbage after the object.
    de.end()
        .map_err(|e| ValidationError::new("", format!("not valid JSON: {e}")))?;
    Ok(wire)
}

/// The event of a parsed wire form, after the envelope's and the event's rules.
fn from_wire(wire: Wire, opts: &DecodeOptions) -> Result<UsageEvent, ValidationError> {
    if wire.specversion != "1.0" {
        return Err(ValidationError::new(
            "specversion",
            format!("must be \"1.0\", got {:?}", truncate(&wire.specversion)),
        ));
    }
    if wire.kind != "gen_ai.usage" {
        return Err(ValidationError::new(
            "type",
            format!("must be \"gen_ai.usage\", got {:?}", truncate(&wire.kind)),
        ));
    }
    let time = parse_time(&wire.time)?;
    let event = UsageEvent {
        id: wire.id,
        source: wire.source,
        time,
        tenant_id: wire.subject,
        data: wire.data,
    };
    event.validate(opts)?;
    Ok(event)
}

/// RFC 3339 with an explicit offset, uppercase `T` separator (the JSON Schema's pattern).
fn parse_time(s: &str) -> Result<DateTime<FixedOffset>, ValidationError> {
    let bad = || {
        ValidationError::new(
            "time",
            format!(
                "must be an RFC 3339 timestamp with an offset, like 2026-11-03T10:15:30.250Z or 2026-11-03T18:15:30+08:00, got {:?}",
                truncate(s)
            ),
        )
    };
    if s.as_bytes().get(10) != Some(&b'T') || s.ends_with('z') {
        return Err(bad());
    }
    DateTime::parse_from_rfc3339(s).map_err(|_| bad())
}

/// The longest prefix of `path` that is one of [`FIELD_PATHS`]; empty for none.
fn known_path(path: &serde_path_to_error::Path) -> String {
    let mut known = String::new();
    for segment in path {
        let serde_path_to_error::Segment::Map { key } = segment else {
            break;
        };
        // A key "usage.input_tokens" is one unknown key, not two known ones.
        if key.contains('.') {
            break;
        }
        let next = if known.is_empty() {
            key.clone()
        } else {
            format!("{known}.{key}")
        };
        if !FIELD_PATHS.contains(&next.as_str()) {
            break;
        }
        known = next;
    }
    known
}

/// Cut a rule longer than [`MAX_RULE_CHARS`] in the middle, keeping its start (what is wrong)
/// and its end (what was expected).
fn bounded(rule: String) -> String {
    let n = rule.chars().count();
    if n <= MAX_RULE_CHARS {
        return rule;
    }
    let head: String = rule.chars().take(MAX_RULE_CHARS / 2).collect();
    let tail: String = rule.chars().skip(n - (MAX_RULE_CHARS / 2 - 1)).collect();
    format!("{head}…{tail}")
}

/// serde_json appends " at line L column C"; the field path says more, so drop it.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// A valid event, the corpus's `full.json`.
    const FULL: &str = include_str!("../examples/valid/full.json");

    fn opts() -> DecodeOptions {
        DecodeOptions {
            now: Some(Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap()),
            ..Default::default()
        }
    }

    /// `full.json` with its first `from` replaced by `to`.
    fn full_with(from: &str, to: &str) -> String {
        assert!(FULL.contains(from), "{from:?} is not in full.json");
        FULL.replacen(from, to, 1)
    }

    fn decode_err(text: impl AsRef<[u8]>) -> ValidationError {
        decode_event(text.as_ref(), &opts()).expect_err("decodes, but should not")
    }

    #[test]
    fn nesting_is_measured_outside_strings() {
        assert!(nesting_within(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(!nesting_within(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(nesting_within(br#"{"a":"[[[[{{{{\"[[["}"#, 1));
        assert!(!nesting_within(&[b'['; 65], 64));
        assert!(nesting_within(&[b'['; 64], 64));
    }

    #[test]
    fn full_example_decodes() {
        let e = decode_event(FULL.as_bytes(), &opts()).unwrap();
        assert_eq!(e.data.usage.input_tokens, 12000);
    }

    #[test]
    fn invalid_utf8_is_a_message_error() {
        let mut bytes = FULL.as_bytes().to_vec();
        bytes[40] = 0xff;
        let e = decode_err(&bytes);
        assert_eq!(e.field, "");
        assert_eq!(e.rule, "not UTF-8: invalid byte at offset 40");
        assert_eq!(e.reason(), "utf8");
        // A lone surrogate half encoded in UTF-8 (CESU-8 style) is not UTF-8 either.
        let mut bytes = FULL.as_bytes().to_vec();
        bytes.splice(40..40, [0xed, 0xa0, 0x80]);
        assert_eq!(decode_err(&bytes).reason(), "utf8");
    }

    #[test]
    fn ten_megabytes_are_rejected_before_parsing() {
        const TEN_MB: usize = 10 << 20;
        let want = "message is 10485760 bytes, over the 1048576-byte limit";
        // Valid JSON, invalid UTF-8, deep nesting: the same verdict, so the content is never
        // looked at (invalid UTF-8 would otherwise say "utf8", nesting "json").
        let mut padded_event = FULL.as_bytes().to_vec();
        padded_event.resize(TEN_MB, b' ');
        let started = std::time::Instant::now();
        for bytes in [padded_event, vec![0xff; TEN_MB], vec![b'['; TEN_MB]] {
            let e = decode_err(&bytes);
            assert_eq!(e.field, "");
            assert_eq!(e.rule, want);
            assert_eq!(e.reason(), "too_large");
        }
        // Reading 30 MB through UTF-8 validation and a parser would take far longer in a debug
        // build; a length check takes microseconds.
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
        // One byte over the configured limit is enough.
        let small = DecodeOptions {
            max_message_bytes: FULL.len() - 1,
            ..opts()
        };
        let e = decode_event(FULL.as_bytes(), &small).unwrap_err();
        assert_eq!(e.reason(), "too_large");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        const LEVELS: usize = 100_000;
        let cases = [
            // In a member the contract does not know: skipped without recursion, so the
            // missing closing brackets are what fails; the unknown key is not named.
            (
                "\"operation\"",
                format!("\"x\": {}", "[".repeat(LEVELS)),
                "data",
            ),
            (
                "\"operation\"",
                format!("\"x\": {}", "{\"a\":".repeat(LEVELS)),
                "data",
            ),
            (
                "\"step\": \"plan\"",
                format!("\"x\": {}", "{\"a\":".repeat(LEVELS)),
                "data.agent",
            ),
        ];
        for (from, to, field) in &cases {
            let e = decode_err(full_with(from, to));
            assert_eq!(&e.field, field, "{e}");
            assert!(
                e.rule.starts_with("not valid JSON: expected value at line"),
                "{e}"
            );
            assert!(e.rule.chars().count() <= MAX_RULE_CHARS);
        }
        // Where the contract expects a number or an object, the first bracket is the error.
        let e = decode_err(full_with("12000", &"[".repeat(LEVELS)));
        assert_eq!(e.field, "data.usage.input_tokens");
        assert_eq!(
            e.rule,
            "invalid type: sequence, expected an integer in 0..=1000000000"
        );
        let e = decode_err(full_with(
            "\"agent\": {",
            &format!("\"agent\": {}", "[".repeat(LEVELS)),
        ));
        assert_eq!(e.field, "data.agent");
        assert_eq!(e.rule, "invalid type: sequence, expected a JSON object");
        // The whole message: refused at its first byte.
        let e = decode_err("[".repeat(LEVELS));
        assert_eq!(e.field, "");
        assert_eq!(e.reason(), "json");
        // Balanced nesting in an unknown member is accepted like any unknown member (the
        // contract allows them): skipped iteratively, bounded by `max_message_bytes`, and not
        // carried on by `to_json`.
        let deep = format!(
            "\"x\": {}{}, \"operation\"",
            "[".repeat(LEVELS),
            "]".repeat(LEVELS)
        );
        let e = decode_event(full_with("\"operation\"", &deep).as_bytes(), &opts()).unwrap();
        assert!(!e.to_json().contains("\"x\""));
    }

    #[test]
    fn numbers_beyond_u64_name_the_field() {
        for (number, got) in [
            ("18446744073709551616", "1.8446744073709552e19"),
            ("1e30", "1e30"),
            ("-1", "-1"),
            ("1.5", "1.5"),
            ("-1e30", "-1e30"),
        ] {
            let e = decode_err(full_with("12000", number));
            assert_eq!(e.field, "data.usage.input_tokens", "{number}");
            assert_eq!(
                e.rule,
                format!("must be an integer in 0..=1000000000, got {got}"),
                "{number}"
            );
            assert_eq!(e.reason(), "data.usage.input_tokens");
        }
        // Beyond even f64: valid JSON, but no parser here can hold it.
        let e = decode_err(full_with("12000", "1e400"));
        assert_eq!(e.field, "data.usage.input_tokens");
        assert_eq!(
            e.rule,
            "must be a number within the 64-bit floating-point range, got one out of range"
        );
    }

    #[test]
    fn duplicate_keys_name_the_key_in_its_object() {
        // serde's rule names the duplicated key; the field is the object holding it.
        for (from, to, field, rule) in [
            (
                "\"input_tokens\": 12000",
                "\"input_tokens\": 12000, \"input_tokens\": 1",
                "data.usage",
                "duplicate field `input_tokens`",
            ),
            (
                "\"provider\"",
                "\"provider\": \"x\", \"provider\"",
                "data",
                "duplicate field `provider`",
            ),
            (
                "\"specversion\": \"1.0\"",
                "\"specversion\": \"1.0\", \"specversion\": \"1.0\"",
                "",
                "duplicate field `specversion`",
            ),
            // An escaped spelling of the same key is the same key.
            (
                "\"provider\"",
                "\"provider\": \"x\", \"provide\\u0072\"",
                "data",
                "duplicate field `provider`",
            ),
        ] {
            let e = decode_err(full_with(from, to));
            assert_eq!(e.field, field, "{to}");
            assert_eq!(e.rule, rule, "{to}");
        }
    }

    #[test]
    fn field_is_a_known_path_whatever_the_keys() {
        let long_key = "k".repeat(100_000);
        for (text, field) in [
            // An unknown key with a syntax error in its value.
            (format!("{{\"data\": {{\"{long_key}\": ["), "data"),
            (
                full_with("\"operation\"", "\"zz\": [1,,], \"operation\""),
                "data",
            ),
            // A key that is not a string, or not a valid string.
            ("{1: 2}".to_string(), ""),
            (
                full_with("\"operation\"", "\"z\\ud800\": 1, \"operation\""),
                "data",
            ),
            // An enum written as an object: the variant is not a field.
            (full_with("\"plan\"", "{\"act\": 1}"), "data.agent.step"),
            // A key with a dot is one unknown key, not a path.
            (
                full_with("\"operation\"", "\"usage.input_tokens\": [, \"operation\""),
                "data",
            ),
        ] {
            let e = decode_err(&text);
            assert_eq!(e.field, field, "{e}");
            assert!(e.field.is_empty() || FIELD_PATHS.contains(&e.field.as_str()));
        }
    }

    #[test]
    fn rule_is_bounded_whatever_the_value() {
        let long = "x".repeat(1 << 19);
        for (text, field, start, end) in [
            (
                full_with("\"ok\"", &format!("\"{long}\"")),
                "data.status",
                "unknown variant `xxx",
                "xxx`, expected `ok` or `error`",
            ),
            (
                full_with("12000", &format!("\"{long}\"")),
                "data.usage.input_tokens",
                "invalid type: string \"xxx",
                "xxx\", expected an integer in 0..=1000000000",
            ),
        ] {
            let e = decode_err(&text);
            assert_eq!(e.field, field);
            assert_eq!(e.rule.chars().count(), MAX_RULE_CHARS);
            assert!(e.rule.starts_with(start), "{e}");
            assert!(e.rule.ends_with(end), "{e}");
            assert!(e.rule.contains('…'));
        }
        // Multi-byte characters are cut between characters, never inside one.
        let e = decode_err(full_with("\"ok\"", &format!("\"{}\"", "é".repeat(1000))));
        assert_eq!(e.rule.chars().count(), MAX_RULE_CHARS);
        // Short rules are left alone.
        assert_eq!(bounded("short".into()), "short");
        let exact = "y".repeat(MAX_RULE_CHARS);
        assert_eq!(bounded(exact.clone()), exact);
    }

    fn usage(i: u64, cr: u64, cw: u64, o: u64, r: u64) -> Usage {
        Usage {
            input_tokens: i,
            cache_read_input_tokens: cr,
            cache_creation_input_tokens: cw,
            output_tokens: o,
            reasoning_output_tokens: r,
        }
    }

    #[test]
    fn buckets_partition_input_plus_output() {
        for (i, cr, cw, o, r) in [
            (12000, 8000, 0, 900, 300),
            (0, 0, 0, 0, 0),
            (10, 4, 6, 7, 7),
            (MAX_TOKENS, MAX_TOKENS, 0, MAX_TOKENS, 1),
        ] {
            let u = usage(i, cr, cw, o, r);
            let b = u.buckets();
            assert_eq!(b.total(), i + o);
            assert_eq!(b.uncached_input, i - cr - cw);
            assert_eq!(b.cache_read, cr);
            assert_eq!(b.cache_write, cw);
            assert_eq!(b.output, o - r);
            assert_eq!(b.reasoning, r);
        }
    }
}
