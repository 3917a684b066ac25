//! The Rust validator and the shipped JSON Schema agree on every example of the corpus:
//! `valid/` passes both; `invalid/` fails both, and Rust names the expected field;
//! `semantic/` (cross-field and clock rules a JSON Schema cannot express) passes the schema and
//! fails Rust on the expected field.

use chrono::{TimeZone, Utc};
use serde_json::Value;
use std::path::Path;
use tokenmeter_schemas::{DecodeOptions, USAGE_EVENT_JSON_SCHEMA, decode_event};

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/examples")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {}", root.display());
    out
}

fn opts() -> DecodeOptions {
    // A fixed clock: corpus times are in 2025–2026, the future example in 2099.
    DecodeOptions {
        now: Some(Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap()),
        ..Default::default()
    }
}

#[test]
fn validator_and_json_schema_agree_on_the_corpus() {
    let schema: Value = serde_json::from_str(USAGE_EVENT_JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for (name, bytes) in corpus("valid") {
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(
            validator.is_valid(&json),
            "{name}: the schema rejects a valid example"
        );
        if let Err(e) = decode_event(&bytes, &opts()) {
            panic!("{name}: Rust rejects a valid example: {e}");
        }
        checked += 1;
    }
    for dir in ["invalid", "semantic"] {
        for (name, bytes) in corpus(dir) {
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                validator.is_valid(&json),
                dir == "semantic",
                "{name}: schema verdict"
            );
            let err = decode_event(&bytes, &opts()).expect_err(&name);
            let want = expected[&name]["field"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} missing from expected.json"));
            assert_eq!(
                err.field, want,
                "{name}: Rust names the wrong field ({err})"
            );
            assert!(!err.rule.is_empty(), "{name}: no rule");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        expected.as_object().unwrap().len() + corpus("valid").len()
    );
}

#[test]
fn errors_name_field_and_rule() {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/valid/full.json"),
    )
    .unwrap();
    let cases = [
        (
            "\"input_tokens\": 12000",
            "\"input_tokens\": 18446744073709551616",
            "data.usage.input_tokens",
            "integer in 0..=1000000000",
        ),
        (
            "\"input_tokens\": 12000",
            "\"input_tokens\": \"12000\"",
            "data.usage.input_tokens",
            "integer in 0..=1000000000",
        ),
        (
            "\"specversion\": \"1.0\"",
            "\"specversion\": \"1.0\", \"specversion\": \"1.0\"",
            "",
            "duplicate field",
        ),
    ];
    for (from, to, field, rule) in cases {
        let text = base.replacen(from, to, 1);
        assert_ne!(text, base, "case {to} did not apply");
        let e = decode_event(text.as_bytes(), &opts()).unwrap_err();
        assert_eq!(e.field, field, "{to}: {e}");
        assert!(e.to_string().contains(rule), "{to}: {e}");
    }
    // Not UTF-8, too large, nested too deep, empty: each a clear message-level error.
    let mut bad = base.clone().into_bytes();
    bad[40] = 0xff;
    assert!(
        decode_event(&bad, &opts())
            .unwrap_err()
            .rule
            .starts_with("not UTF-8")
    );
    let big = vec![b' '; (1 << 20) + 1];
    assert_eq!(
        decode_event(&big, &opts()).unwrap_err().reason(),
        "too_large"
    );
    let deep = "[".repeat(10_000);
    assert_eq!(
        decode_event(deep.as_bytes(), &opts()).unwrap_err().reason(),
        "json"
    );
    assert_eq!(decode_event(b"", &opts()).unwrap_err().reason(), "json");
}
