//! Property-based fuzzing of [`decode_event`] with hostile input: arbitrary bytes, and valid
//! events (built like `schemas/examples/valid/`) mutated by byte overwrites, insertions, deletions and
//! truncation, fields replaced by arbitrary JSON (huge and negative numbers, `1e400`, nesting,
//! `null`), deep nesting, duplicate keys and very long strings.
//!
//! Properties, for every input: decoding does not panic; an accepted event re-validates and its
//! `to_json()` decodes to an equal event; a rejected one has a non-empty, bounded `rule` and a
//! `field` that is empty or one of the contract's field paths.
//!
//! Not here: the exact rule for each poison message (the unit tests in `src/event.rs` pin those),
//! coverage-guided fuzzing (`fuzz/` at the repository root), or agreement with the JSON Schema
//! (`tests/it/contract.rs`). Case counts are proptest's default (256 per property) unless
//! `PROPTEST_CASES` says otherwise.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};
use tokenmeter_schemas::event::{FIELD_PATHS, MAX_ID_CHARS, MAX_RULE_CHARS, MAX_SUBJECT_CHARS};
use tokenmeter_schemas::{AgentStep, DecodeOptions, JsonParser, MAX_TOKENS, decode_event};

/// A fixed clock, later than every time the generators make.
fn opts() -> DecodeOptions {
    DecodeOptions {
        now: Some(Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap()),
        ..Default::default()
    }
}

/// The properties every input must satisfy.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let opts = opts();
    // Both fast-path parsers give the same verdict, the same event and the same error.
    let sonic = DecodeOptions {
        parser: JsonParser::SonicRs,
        ..opts.clone()
    };
    let serde = DecodeOptions {
        parser: JsonParser::SerdeJson,
        ..opts.clone()
    };
    prop_assert_eq!(
        decode_event(bytes, &sonic),
        decode_event(bytes, &serde),
        "sonic-rs and serde_json disagree on {}",
        String::from_utf8_lossy(bytes)
    );
    match decode_event(bytes, &opts) {
        Ok(event) => {
            prop_assert_eq!(event.validate(&opts), Ok(()));
            let json = event.to_json();
            // Re-encoding can grow a message by a few bytes (`1e9` is written 1000000000, an
            // absent status "ok"), so an event just under the size limit may re-encode just
            // over it: the round trip is about content, not the limit.
            let unlimited = DecodeOptions {
                max_message_bytes: usize::MAX,
                ..opts.clone()
            };
            let again = decode_event(json.as_bytes(), &unlimited);
            prop_assert!(
                again.is_ok(),
                "to_json() is rejected: {:?}\n{}",
                again,
                json
            );
            let again = again.unwrap();
            prop_assert_eq!(&again, &event, "{}", json);
            prop_assert_eq!(again.time.offset(), event.time.offset());
            prop_assert_eq!(again.to_json(), json);
        }
        Err(e) => {
            prop_assert!(!e.rule.is_empty(), "empty rule for field {:?}", e.field);
            prop_assert!(
                e.rule.chars().count() <= MAX_RULE_CHARS,
                "rule of {} characters",
                e.rule.chars().count()
            );
            prop_assert!(
                e.field.is_empty() || FIELD_PATHS.contains(&e.field.as_str()),
                "field {:?} is not a contract path ({})",
                e.field,
                e
            );
            prop_assert!(!e.reason().is_empty());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Valid events.

fn text(max: usize) -> impl Strategy<Value = String> {
    // Any characters, control and non-BMP ones included: the encoder escapes what it must.
    prop_oneof![
        proptest::string::string_regex(&format!("[a-z0-9/._-]{{1,{max}}}")).unwrap(),
        proptest::string::string_regex(&format!("(.|\n){{1,{max}}}")).unwrap(),
    ]
}

fn time() -> impl Strategy<Value = String> {
    let offset = prop_oneof![
        Just("Z".to_string()),
        Just("+00:00".to_string()),
        Just("-00:00".to_string()),
        (any::<bool>(), 0u32..24, 0u32..60)
            .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
    ];
    let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{1,9}"];
    (
        1970u32..=2025,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        fraction,
        offset,
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

fn usage() -> impl Strategy<Value = Value> {
    (
        0..=MAX_TOKENS,
        0..=MAX_TOKENS,
        any::<Index>(),
        any::<Index>(),
        any::<Index>(),
    )
        .prop_map(|(input, output, cr, cw, r)| {
            let cache_read = cr.index(input as usize + 1) as u64;
            let cache_write = cw.index((input - cache_read) as usize + 1) as u64;
            let reasoning = r.index(output as usize + 1) as u64;
            json!({
                "input_tokens": input,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
                "output_tokens": output,
                "reasoning_output_tokens": reasoning,
            })
        })
}

fn agent() -> impl Strategy<Value = Value> {
    (
        text(20),
        proptest::option::of(text(20)),
        proptest::option::of(text(20)),
        proptest::option::of(proptest::sample::select(AgentStep::ALL.to_vec())),
    )
        .prop_map(|(id, name, run_id, step)| {
            let mut a = Map::new();
            a.insert("id".into(), id.into());
            if let Some(n) = name {
                a.insert("name".into(), n.into());
            }
            if let Some(r) = run_id {
                a.insert("run_id".into(), r.into());
            }
            if let Some(s) = step {
                a.insert("step".into(), s.as_str().into());
            }
            Value::Object(a)
        })
}

/// An optional member: absent, `null`, or present.
fn optional(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        3 => v.prop_map(Some),
    ]
}

/// A valid usage event as a JSON value.
fn valid_event() -> impl Strategy<Value = Value> {
    let envelope = (
        proptest::string::string_regex(&format!("(.|\n){{1,{MAX_ID_CHARS}}}")).unwrap(),
        text(40),
        time(),
        proptest::string::string_regex(&format!("[A-Za-z0-9._:-]{{1,{MAX_SUBJECT_CHARS}}}"))
            .unwrap(),
    );
    let data = (
        (text(20), text(40), optional(text(10).prop_map(Value::from))),
        optional(agent()),
        (
            optional(text(10).prop_map(Value::from)),
            optional(text(10).prop_map(Value::from)),
            optional(text(10).prop_map(Value::from)),
        ),
        usage(),
        optional(any::<u64>().prop_map(Value::from)),
        optional(prop_oneof![Just(json!("ok")), Just(json!("error"))]),
    );
    (envelope, data).prop_map(
        |(
            (id, source, time, subject),
            (
                (provider, model, operation),
                agent,
                (channel, api_key_id, user_id),
                usage,
                latency,
                status,
            ),
        )| {
            let mut d = Map::new();
            d.insert("provider".into(), provider.into());
            d.insert("model".into(), model.into());
            for (k, v) in [
                ("operation", operation),
                ("agent", agent),
                ("channel", channel),
                ("api_key_id", api_key_id),
                ("user_id", user_id),
                ("latency_ms", latency),
                ("status", status),
            ] {
                if let Some(v) = v {
                    d.insert(k.into(), v);
                }
            }
            d.insert("usage".into(), usage);
            json!({
                "specversion": "1.0",
                "type": "gen_ai.usage",
                "id": id,
                "source": source,
                "time": time,
                "subject": subject,
                "data": d,
            })
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Hostile values, as raw JSON text (serde_json's `Value` cannot hold 1e400 or 2^64).

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(.|\n){0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn hostile_value() -> impl Strategy<Value = String> {
    let numbers = proptest::sample::select(vec![
        "1e400",
        "-1e400",
        "1e-400",
        "18446744073709551616",
        "18446744073709551615",
        "9223372036854775808",
        "-9223372036854775809",
        "1000000001",
        "1000000000",
        "1e9",
        "1E9",
        "1e30",
        "-1",
        "-0",
        "-0.0",
        "0.5",
        "1.0",
        "1.5",
        "00",
        "01",
        "1.",
        ".1",
        "+1",
        "0x10",
        "NaN",
        "Infinity",
        "-",
        "1e",
        "\"\"",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "\"a\\\"b\"",
        "{}",
        "[]",
        "true",
        "null",
    ]);
    prop_oneof![
        3 => numbers.prop_map(String::from),
        3 => json_value().prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|n| format!("{n}{n}")),
        // Deep nesting, closed or not.
        1 => (1usize..10_000, any::<bool>(), any::<bool>()).prop_map(|(n, obj, close)| {
            let (open, end, inner) = if obj { ("{\"a\":", "}", "1") } else { ("[", "]", "") };
            if close {
                format!("{}{inner}{}", open.repeat(n), end.repeat(n))
            } else {
                open.repeat(n)
            }
        }),
        // Very long strings, with characters that need escaping.
        1 => (0usize..200_000, proptest::sample::select(vec!["x", "é", "\\n", "\\u0041", "😀"]))
            .prop_map(|(n, c)| format!("\"{}\"", c.repeat(n))),
    ]
}

/// Member names to replace or add, known at each level or not.
const KEYS: &[&str] = &[
    "specversion",
    "type",
    "id",
    "source",
    "time",
    "subject",
    "data",
    "provider",
    "model",
    "operation",
    "agent",
    "name",
    "run_id",
    "step",
    "channel",
    "api_key_id",
    "user_id",
    "usage",
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "latency_ms",
    "status",
    "unknown",
    "usage.input_tokens",
    "",
];

/// The byte offsets just after each `"key":` in compact JSON text.
fn value_starts(text: &str, key: &str) -> Vec<usize> {
    let needle = format!("\"{key}\":");
    text.match_indices(&needle)
        .map(|(i, _)| i + needle.len())
        .collect()
}

/// The byte offsets just after each `{` that opens an object.
fn object_starts(text: &str) -> Vec<usize> {
    let mut in_string = false;
    let mut escaped = false;
    let mut out = Vec::new();
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'{' if !in_string => out.push(i + 1),
            _ => {}
        }
    }
    out
}

/// The end of the JSON value starting at byte `start` of `text`, if one starts there (a
/// `"key":` found inside a string value is no member).
fn value_end(text: &str, start: usize) -> Option<usize> {
    let mut de = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
    de.next()?.ok()?;
    Some(start + de.byte_offset())
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value of the n-th occurrence of a key by raw JSON text.
    Replace(&'static str, Index, String),
    /// Add a member (a duplicate, or an unknown one) at the start of some object.
    Insert(&'static str, Index, String),
    /// Repeat the n-th occurrence of a key just before itself, with its own value or another.
    Duplicate(&'static str, Index, Option<String>),
    /// Overwrite a byte.
    Set(Index, u8),
    /// Insert bytes.
    InsertBytes(Index, Vec<u8>),
    /// Delete a range of bytes.
    Delete(Index, usize),
    /// Cut the message short.
    Truncate(Index),
}

/// A byte to write: mostly one that means something to JSON (any byte would mostly make the
/// message invalid UTF-8, which the first check rejects), sometimes any.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => proptest::sample::select(b"{}[],:\"\\ \t\n0123456789-+.eEtrufalsn".to_vec()),
        1 => any::<u8>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let key = proptest::sample::select(KEYS);
    prop_oneof![
        4 => (key.clone(), any::<Index>(), hostile_value())
            .prop_map(|(k, i, v)| Mutation::Replace(k, i, v)),
        3 => (key.clone(), any::<Index>(), hostile_value())
            .prop_map(|(k, i, v)| Mutation::Insert(k, i, v)),
        2 => (key, any::<Index>(), proptest::option::of(hostile_value()))
            .prop_map(|(k, i, v)| Mutation::Duplicate(k, i, v)),
        2 => (any::<Index>(), byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(byte(), 1..8))
            .prop_map(|(i, b)| Mutation::InsertBytes(i, b)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// Apply mutations in order; text-level ones first need the text to still be JSON to find their
/// place, and are skipped once it is not.
fn mutate(event: &Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = event.to_string().into_bytes();
    for m in mutations {
        let text = std::str::from_utf8(&bytes).ok();
        let json = text.filter(|t| serde_json::from_str::<Value>(t).is_ok());
        match m {
            Mutation::Replace(key, i, raw) => {
                if let Some(text) = json {
                    let starts = value_starts(text, key);
                    if !starts.is_empty() {
                        let start = starts[i.index(starts.len())];
                        if let Some(end) = value_end(text, start) {
                            bytes.splice(start..end, raw.bytes());
                        }
                    }
                }
            }
            Mutation::Insert(key, i, raw) => {
                if let Some(text) = json {
                    let starts = object_starts(text);
                    let at = starts[i.index(starts.len())];
                    let sep = if text.as_bytes()[at] == b'}' { "" } else { "," };
                    let member = format!("\"{key}\":{raw}{sep}");
                    bytes.splice(at..at, member.bytes());
                }
            }
            Mutation::Duplicate(key, i, raw) => {
                if let Some(text) = json {
                    let starts = value_starts(text, key);
                    if !starts.is_empty() {
                        let start = starts[i.index(starts.len())];
                        if let Some(end) = value_end(text, start) {
                            let value = raw.as_deref().unwrap_or(&text[start..end]);
                            let member = format!("\"{key}\":{value},");
                            let at = start - key.len() - 3;
                            bytes.splice(at..at, member.into_bytes());
                        }
                    }
                }
            }
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::InsertBytes(i, b) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) if !bytes.is_empty() => {
                let at = i.index(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Truncate(i) => {
                let at = i.index(bytes.len() + 1);
                bytes.truncate(at);
            }
            Mutation::Set(..) | Mutation::Delete(..) => {}
        }
    }
    bytes
}

proptest! {
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_in_an_object(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut msg = b"{".to_vec();
        msg.extend_from_slice(&bytes);
        check(&msg)?;
    }

    #[test]
    fn valid_events_are_accepted(event in valid_event(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&event).unwrap()
        } else {
            event.to_string()
        };
        let decoded = decode_event(text.as_bytes(), &opts());
        prop_assert!(decoded.is_ok(), "{:?}\n{}", decoded, text);
        check(text.as_bytes())?;
    }

    #[test]
    fn mutated_valid_events(
        event in valid_event(),
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        check(&mutate(&event, &mutations))?;
    }
}

/// The limit itself: a message of exactly `max_message_bytes` is read, one more byte is not.
#[test]
fn size_limit_is_inclusive() {
    let event = r#"{"specversion":"1.0","type":"gen_ai.usage","id":"e","source":"s","time":"2026-01-01T00:00:00Z","subject":"t","data":{"provider":"p","model":"m","usage":{"input_tokens":1,"output_tokens":2}}}"#;
    let exact = DecodeOptions {
        max_message_bytes: event.len(),
        ..opts()
    };
    assert!(decode_event(event.as_bytes(), &exact).is_ok());
    let under = DecodeOptions {
        max_message_bytes: event.len() - 1,
        ..opts()
    };
    assert_eq!(
        decode_event(event.as_bytes(), &under).unwrap_err().reason(),
        "too_large"
    );
}
