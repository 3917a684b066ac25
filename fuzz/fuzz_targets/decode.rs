//! libFuzzer target for `tokenmeter_schemas::decode_event` with default options: any input must
//! decode without panicking, within libFuzzer's memory limits; an accepted event must re-validate
//! and its `to_json()` must decode to an equal event; a rejected one must name a contract field
//! (or the message) and a non-empty, bounded rule.
//!
//! Not here: the exact rule for each input (unit tests in `schemas/src/event.rs`), structured
//! mutation of valid events (`schemas/tests/fuzz_decode.rs`), or anything past decoding (Kafka,
//! pricing, storage).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenmeter_schemas::DecodeOptions;
use tokenmeter_schemas::decode_event;
use tokenmeter_schemas::event::{FIELD_PATHS, MAX_RULE_CHARS};

fuzz_target!(|bytes: &[u8]| {
    let opts = DecodeOptions::default();
    match decode_event(bytes, &opts) {
        Ok(event) => {
            event
                .validate(&opts)
                .expect("an accepted event re-validates");
            let json = event.to_json();
            // Re-encoding may grow a message by a few bytes; the round trip is about content.
            let unlimited = DecodeOptions {
                max_message_bytes: usize::MAX,
                ..opts
            };
            let again = decode_event(json.as_bytes(), &unlimited)
                .unwrap_or_else(|e| panic!("to_json() is rejected: {e}\n{json}"));
            assert_eq!(again, event, "round trip changed the event\n{json}");
            assert_eq!(again.time.offset(), event.time.offset());
        }
        Err(e) => {
            assert!(!e.rule.is_empty(), "empty rule for field {:?}", e.field);
            assert!(
                e.rule.chars().count() <= MAX_RULE_CHARS,
                "rule too long: {e}"
            );
            assert!(
                e.field.is_empty() || FIELD_PATHS.contains(&e.field.as_str()),
                "field {:?} is not a contract path",
                e.field
            );
        }
    }
});
