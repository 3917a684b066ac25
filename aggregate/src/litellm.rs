//! LiteLLM's price catalog (`model_prices_and_context_window.json`) converted into a price book
//! v1 (TOML text), exactly, with every entry it leaves out and why.
//!
//! LiteLLM prices per token as JSON floats. Each float becomes the shortest decimal that reads
//! back as the same float (what Python's `repr` prints and the catalog's authors wrote), then is
//! multiplied by one million in decimal: 2.5e-06 per token is "2.5" per million. Nothing is
//! rounded; a price that would need more than [`PRICE_SCALE`] decimal places per million (often a
//! float artefact such as 2.0000000000000002e-07) skips its entry with a reason.
//!
//! Imported: entries whose `mode` is one of [`TEXT_MODES`] and that have both an input and an
//! output price per token. Their base rates map to the book's five buckets (see [`FIELDS`]);
//! an absent or null optional price is left out so the book's defaults apply (cache prices
//! default to `input`, reasoning to `output`).
//!
//! Not here: file I/O (the CLI's `tokenmeter prices import-litellm`); anything price book v1
//! cannot express — long-context tiers (`*_above_200k_tokens`, reported in [`Import::tiered`]),
//! batch, priority and flex prices, 1-hour cache writes, audio, image and per-query prices.
//! LiteLLM carries no dates: every entry gets [`ImportOptions::effective_from`].

use crate::prices::{PRICE_SCALE, PriceBook, parse_price};
use crate::{Error, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The `mode`s whose entries are priced per text token and are imported.
pub const TEXT_MODES: [&str; 4] = ["chat", "completion", "responses", "embedding"];

/// Book field ← LiteLLM key, in the book's bucket order. `input` and `output` are required.
pub const FIELDS: [(&str, &str); 5] = [
    ("input", "input_cost_per_token"),
    ("cache_read", "cache_read_input_token_cost"),
    ("cache_write", "cache_creation_input_token_cost"),
    ("output", "output_cost_per_token"),
    ("reasoning", "output_cost_per_reasoning_token"),
];

/// LiteLLM's documentation entry at the top of the catalog; not a model.
pub const SAMPLE_SPEC: &str = "sample_spec";

/// What to import and how to date it.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// RFC 3339 time every entry is in force from (LiteLLM carries no dates).
    pub effective_from: String,
    /// Keep only entries whose `litellm_provider` is one of these; `None` keeps all.
    pub providers: Option<Vec<String>>,
    /// Names the catalog in the book's header comment and in errors, e.g. its path.
    pub origin: String,
}

/// Why an entry was left out, as a category (the CLI counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipKind {
    /// LiteLLM's `sample_spec` documentation entry.
    SampleSpec,
    /// The entry is not an object, or a field has the wrong type.
    Malformed,
    /// `mode` is absent or not one of [`TEXT_MODES`].
    NotTextMode,
    /// No input or no output price per token (priced per image, second, query…).
    NoTokenPrice,
    /// A price a book cannot hold exactly: too many decimals, negative, not finite, too large.
    Inexact,
    /// A second entry for a (provider, model) already imported.
    Duplicate,
}

impl SkipKind {
    /// A short description for summaries.
    pub fn describe(self) -> &'static str {
        match self {
            SkipKind::SampleSpec => "LiteLLM's schema example (sample_spec)",
            SkipKind::Malformed => "malformed entry",
            SkipKind::NotTextMode => {
                "not a token-priced text mode (chat, completion, responses, embedding)"
            }
            SkipKind::NoTokenPrice => "no input or output price per token",
            SkipKind::Inexact => {
                "a price a book cannot hold exactly (over 6 decimals per million, negative, …)"
            }
            SkipKind::Duplicate => "duplicate (provider, model)",
        }
    }
}

/// One entry left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The JSON key, as LiteLLM names the model.
    pub model: String,
    /// `litellm_provider`, when the entry has one.
    pub provider: Option<String>,
    pub kind: SkipKind,
    /// Advice naming the field and the rule.
    pub reason: String,
}

/// The converted book and what was left out.
#[derive(Debug, Clone)]
pub struct Import {
    /// Price book v1 text; loads with [`PriceBook::parse`].
    pub toml: String,
    /// `[[price]]` entries written.
    pub written: usize,
    /// Entries left out, in catalog key order.
    pub skipped: Vec<Skipped>,
    /// Entries of providers not in [`ImportOptions::providers`] (not listed in `skipped`).
    pub filtered_out: usize,
    /// Names in [`ImportOptions::providers`] that no entry has as `litellm_provider`.
    pub unknown_providers: Vec<String>,
    /// Written models whose entry also has long-context tiers (`*_above_*_tokens`) that the book
    /// cannot express: their base rates were used.
    pub tiered: Vec<String>,
}

/// Convert a per-token price into the per-million decimal string of the book, exactly.
///
/// The float is written as its shortest round-trip decimal (Rust's `Display` for `f64`: the
/// same digits as Python's `repr`, never an exponent) and its decimal point moved six places.
pub fn per_million(per_token: f64) -> std::result::Result<String, String> {
    if !per_token.is_finite() {
        return Err(format!("{per_token} is not a finite number"));
    }
    if per_token < 0.0 {
        return Err(format!("{per_token:e} per token is negative"));
    }
    let shortest = format!("{per_token}");
    let d = Decimal::from_str_exact(&shortest).map_err(|_| {
        format!("{per_token:e} per token has more digits than a price can hold exactly")
    })?;
    let m = times_million(d).ok_or_else(|| format!("{per_token:e} per token is too large"))?;
    let m = m.normalize();
    if m.scale() > PRICE_SCALE {
        return Err(format!(
            "{per_token:e} per token is {m} per million, {} decimal places; a price book holds at \
             most {PRICE_SCALE} (nearest: {}; if that is the real price, write the entry by hand)",
            m.scale(),
            m.round_dp(PRICE_SCALE).normalize()
        ));
    }
    let s = m.to_string();
    parse_price(&s).map_err(|e| format!("{per_token:e} per token: {e}"))?;
    Ok(s)
}

/// `d × 10⁶` with no rounding: a scale shift, or an integer multiplication; `None` on overflow.
fn times_million(mut d: Decimal) -> Option<Decimal> {
    let scale = d.scale();
    if scale >= PRICE_SCALE {
        d.set_scale(scale - PRICE_SCALE).ok()?;
        Some(d)
    } else {
        d.set_scale(0).ok()?;
        d.checked_mul(Decimal::from(10u64.pow(PRICE_SCALE - scale)))
    }
}

/// A TOML basic string with every character escaped as TOML requires.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// One entry's book fields, or why it is left out.
fn convert(
    entry: &serde_json::Map<String, Value>,
) -> std::result::Result<Vec<(&'static str, String)>, (SkipKind, String)> {
    let mode = match entry.get("mode") {
        None | Some(Value::Null) => {
            return Err((
                SkipKind::NotTextMode,
                "no `mode` (LiteLLM's pricing tiers and placeholders have none); imported modes: \
                 chat, completion, responses, embedding"
                    .into(),
            ));
        }
        Some(Value::String(m)) => m.as_str(),
        Some(other) => {
            return Err((
                SkipKind::Malformed,
                format!("`mode` is {}, not a string", type_name(other)),
            ));
        }
    };
    if !TEXT_MODES.contains(&mode) {
        return Err((
            SkipKind::NotTextMode,
            format!(
                "mode {mode:?} is not priced per text token; imported modes: chat, completion, \
                 responses, embedding"
            ),
        ));
    }
    let mut prices = Vec::with_capacity(FIELDS.len());
    let mut missing = Vec::new();
    for (field, key) in FIELDS {
        let x = match entry.get(key) {
            None | Some(Value::Null) => {
                if field == "input" || field == "output" {
                    missing.push(key);
                }
                continue;
            }
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| {
                (
                    SkipKind::Malformed,
                    format!("`{key}` = {n} is not a number"),
                )
            })?,
            Some(other) => {
                return Err((
                    SkipKind::Malformed,
                    format!("`{key}` is {}, not a number", type_name(other)),
                ));
            }
        };
        let s = per_million(x).map_err(|e| {
            (
                SkipKind::Inexact,
                format!("`{key}` (the book's `{field}`): {e}"),
            )
        })?;
        prices.push((field, s));
    }
    if !missing.is_empty() {
        return Err((
            SkipKind::NoTokenPrice,
            format!(
                "no `{}` (mode {mode:?} priced per image, second, character or query?); a book \
                 entry needs input and output prices per token",
                missing.join("` or `")
            ),
        ));
    }
    Ok(prices)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The entry's `litellm_provider`, when it is a string.
fn provider_of(v: &Value) -> Option<&str> {
    v.get("litellm_provider").and_then(Value::as_str)
}

/// Whether the entry has long-context tier prices the book cannot express.
fn has_tiers(entry: &serde_json::Map<String, Value>) -> bool {
    entry
        .iter()
        .any(|(k, v)| k.contains("_above_") && k.contains("_tokens") && !v.is_null())
}

/// Convert LiteLLM's catalog into price book v1 text; see the module documentation.
pub fn import(json: &str, opts: &ImportOptions) -> Result<Import> {
    let err = |message: String| Error::LiteLlm {
        origin: opts.origin.clone(),
        message,
    };
    let effective_from = DateTime::parse_from_rfc3339(&opts.effective_from)
        .map_err(|_| {
            Error::Config(format!(
                "effective_from (--effective-from) {:?} must be an RFC 3339 time with offset, \
                 e.g. \"2025-04-14T00:00:00Z\"",
                opts.effective_from
            ))
        })?
        .with_timezone(&Utc)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let root: Value = serde_json::from_str(json).map_err(|e| {
        err(format!(
            "not JSON ({e}); expected LiteLLM's model_prices_and_context_window.json"
        ))
    })?;
    let Value::Object(root) = root else {
        return Err(err(format!(
            "the top level is {}; LiteLLM's catalog is an object keyed by model name",
            type_name(&root)
        )));
    };
    if !root.values().any(|v| provider_of(v).is_some()) {
        return Err(err("no entry has a `litellm_provider`: is this LiteLLM's \
             model_prices_and_context_window.json?"
            .into()));
    }
    let wanted: Option<BTreeSet<&str>> = opts
        .providers
        .as_ref()
        .map(|p| p.iter().map(String::as_str).collect());
    let mut seen_providers = BTreeSet::new();
    let mut book: BTreeMap<(&str, &str), Vec<(&'static str, String)>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut filtered_out = 0;
    let mut tiered = Vec::new();
    for (model, value) in &root {
        let provider = provider_of(value);
        let mut skip = |kind, reason: String| {
            skipped.push(Skipped {
                model: model.clone(),
                provider: provider.map(str::to_owned),
                kind,
                reason,
            })
        };
        if model == SAMPLE_SPEC {
            skip(
                SkipKind::SampleSpec,
                "LiteLLM's documentation of the fields, not a model".into(),
            );
            continue;
        }
        let Value::Object(entry) = value else {
            skip(
                SkipKind::Malformed,
                format!("the entry is {}, not an object", type_name(value)),
            );
            continue;
        };
        let Some(provider) = provider.filter(|p| !p.is_empty()) else {
            skip(
                SkipKind::Malformed,
                "no `litellm_provider` string: the book needs a provider".into(),
            );
            continue;
        };
        seen_providers.insert(provider);
        if wanted.as_ref().is_some_and(|w| !w.contains(provider)) {
            filtered_out += 1;
            continue;
        }
        if model.is_empty() {
            skip(SkipKind::Malformed, "the model name is empty".into());
            continue;
        }
        match convert(entry) {
            Err((kind, reason)) => skip(kind, reason),
            Ok(prices) => {
                if book.contains_key(&(provider, model.as_str())) {
                    skip(
                        SkipKind::Duplicate,
                        format!("{provider}/{model} is already in the book"),
                    );
                    continue;
                }
                if has_tiers(entry) {
                    tiered.push(model.clone());
                }
                book.insert((provider, model.as_str()), prices);
            }
        }
    }
    let unknown_providers = wanted
        .iter()
        .flatten()
        .filter(|p| !seen_providers.contains(*p))
        .map(|p| p.to_string())
        .collect();

    let origin: String = opts
        .origin
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut toml = String::new();
    // `write!` to a String cannot fail.
    let _ = write!(
        toml,
        "# Price book v1 imported from LiteLLM's model_prices_and_context_window.json\n\
         # ({origin}) by `tokenmeter prices import-litellm`.\n\
         #\n\
         # Each price per token (a JSON float) was written as its shortest round-trip decimal and\n\
         # multiplied by 1,000,000 exactly; nothing was rounded. Entries needing more than {PRICE_SCALE}\n\
         # decimal places per million were left out, as were modes other than chat, completion,\n\
         # responses and embedding. Not imported: long-context tiers, batch, priority and flex\n\
         # prices, 1-hour cache writes, audio, image and per-query prices.\n\
         #\n\
         # LiteLLM carries no dates: every entry is effective from {effective_from}\n\
         # (set with --effective-from).\n\
         currency = \"USD\"\n"
    );
    for ((provider, model), prices) in &book {
        let _ = write!(
            toml,
            "\n[[price]]\nprovider = {}\nmodel = {}\neffective_from = {}\n",
            quoted(provider),
            quoted(model),
            quoted(&effective_from)
        );
        for (field, value) in prices {
            let _ = writeln!(toml, "{field} = {}", quoted(value));
        }
    }
    // The output must load: check it here rather than leave a broken book to the aggregator.
    let loaded = PriceBook::parse(&toml, "the imported book").map_err(|e| {
        err(format!(
            "internal error, the converted book does not load: {e}"
        ))
    })?;
    if loaded.len() != book.len() {
        return Err(err(format!(
            "internal error, the converted book has {} entries instead of {}",
            loaded.len(),
            book.len()
        )));
    }
    Ok(Import {
        toml,
        written: book.len(),
        skipped,
        filtered_out,
        unknown_providers,
        tiered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rates;

    fn opts() -> ImportOptions {
        ImportOptions {
            effective_from: "2025-01-01T00:00:00Z".into(),
            providers: None,
            origin: "test.json".into(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn per_token_floats_become_exact_per_million_decimals() {
        assert_eq!(per_million(2.5e-06).unwrap(), "2.5");
        assert_eq!(per_million(1.25e-07).unwrap(), "0.125");
        assert_eq!(per_million(3e-05).unwrap(), "30");
        assert_eq!(per_million(1e-05).unwrap(), "10");
        assert_eq!(per_million(2.8e-08).unwrap(), "0.028");
        assert_eq!(per_million(0.0).unwrap(), "0");
        assert_eq!(per_million(-0.0).unwrap(), "0");
        assert_eq!(per_million(1e-12).unwrap(), "0.000001");
        assert_eq!(per_million(1.0).unwrap(), "1000000");
        assert_eq!(per_million(3.0).unwrap(), "3000000");
    }

    #[test]
    fn prices_a_book_cannot_hold_are_refused_with_the_reason() {
        let e = per_million(2.0000000000000002e-07).unwrap_err();
        assert!(e.contains("0.20000000000000002 per million"), "{e}");
        assert!(e.contains("17 decimal places"), "{e}");
        assert!(e.contains("nearest: 0.2"), "{e}");
        assert!(per_million(1e-13).unwrap_err().contains("7 decimal places"));
        assert!(per_million(-1e-06).unwrap_err().contains("negative"));
        assert!(per_million(f64::NAN).unwrap_err().contains("not a finite"));
        assert!(
            per_million(f64::INFINITY)
                .unwrap_err()
                .contains("not a finite")
        );
        assert!(per_million(1e20).unwrap_err().contains("too large"));
        assert!(per_million(f64::MAX).unwrap_err().contains("per token"));
        assert!(per_million(5e-324).unwrap_err().contains("per token"));
    }

    const CATALOG: &str = r#"{
      "sample_spec": {"litellm_provider": "one of the providers", "mode": "chat",
                      "input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
      "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                 "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                 "cache_read_input_token_cost": 1.25e-06, "input_cost_per_token_batches": 1.25e-06},
      "claude-x": {"litellm_provider": "anthropic", "mode": "chat",
                   "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                   "cache_read_input_token_cost": 3e-07,
                   "cache_creation_input_token_cost": 3.75e-06,
                   "output_cost_per_reasoning_token": null},
      "gemini/gemini-2.5-pro": {"litellm_provider": "gemini", "mode": "chat",
                   "input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05,
                   "output_cost_per_reasoning_token": 1e-05,
                   "input_cost_per_token_above_200k_tokens": 2.5e-06},
      "bedrock/*/1-month-commitment/odd \"name\"\\x@v1:0": {"litellm_provider": "bedrock",
                   "mode": "completion", "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
      "text-embed": {"litellm_provider": "openai", "mode": "embedding",
                   "input_cost_per_token": 2e-08, "output_cost_per_token": 0},
      "float-artefact": {"litellm_provider": "novita", "mode": "chat",
                   "input_cost_per_token": 1e-07, "output_cost_per_token": 2.0000000000000002e-07},
      "negative": {"litellm_provider": "novita", "mode": "chat",
                   "input_cost_per_token": -1e-07, "output_cost_per_token": 1e-07},
      "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation",
                   "input_cost_per_pixel": 1e-08, "output_cost_per_token": 0.0},
      "tts": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_character": 1.5e-05},
      "tier": {"litellm_provider": "fireworks_ai", "input_cost_per_token": 1e-07, "output_cost_per_token": 1e-07},
      "stringy": {"litellm_provider": "openai", "mode": "chat",
                  "input_cost_per_token": "0.1", "output_cost_per_token": 1e-07},
      "not-an-object": 7
    }"#;

    #[test]
    fn a_catalog_converts_to_a_book_that_loads_with_the_expected_rates() {
        let imp = import(CATALOG, &opts()).unwrap();
        assert_eq!(imp.written, 5, "{}", imp.toml);
        let book = PriceBook::parse(&imp.toml, "imported").unwrap();
        assert_eq!(book.currency, "USD");
        assert_eq!(book.len(), 5);
        let at = t("2025-06-01T00:00:00Z");
        let rates = |p: &str, m: &str| book.lookup(p, m, at).unwrap().rates;
        // cache_write defaults to input, reasoning to output.
        assert_eq!(
            rates("openai", "gpt-4o"),
            Rates([2_500_000, 1_250_000, 2_500_000, 10_000_000, 10_000_000])
        );
        // A null optional price is left out, so the default applies.
        assert_eq!(
            rates("anthropic", "claude-x"),
            Rates([3_000_000, 300_000, 3_750_000, 15_000_000, 15_000_000])
        );
        assert_eq!(
            rates("gemini", "gemini/gemini-2.5-pro"),
            Rates([1_250_000, 1_250_000, 1_250_000, 10_000_000, 10_000_000])
        );
        assert_eq!(
            rates("openai", "text-embed"),
            Rates([20_000, 20_000, 20_000, 0, 0])
        );
        // Nothing before effective_from.
        assert!(
            book.lookup("openai", "gpt-4o", t("2024-12-31T23:59:59Z"))
                .is_none()
        );
        assert_eq!(imp.tiered, ["gemini/gemini-2.5-pro"]);

        let kinds: BTreeMap<&str, SkipKind> = imp
            .skipped
            .iter()
            .map(|s| (s.model.as_str(), s.kind))
            .collect();
        assert_eq!(
            kinds,
            BTreeMap::from([
                ("sample_spec", SkipKind::SampleSpec),
                ("float-artefact", SkipKind::Inexact),
                ("negative", SkipKind::Inexact),
                ("dall-e-3", SkipKind::NotTextMode),
                ("tts", SkipKind::NoTokenPrice),
                ("tier", SkipKind::NotTextMode),
                ("stringy", SkipKind::Malformed),
                ("not-an-object", SkipKind::Malformed),
            ])
        );
        let reason = |m: &str| &imp.skipped.iter().find(|s| s.model == m).unwrap().reason;
        // The reason names the LiteLLM key and the book's field, and says why.
        let r = reason("float-artefact");
        assert!(r.contains("`output_cost_per_token`"), "{r}");
        assert!(r.contains("`output`"), "{r}");
        assert!(r.contains("17 decimal places"), "{r}");
        assert!(reason("negative").contains("`input_cost_per_token`"));
        assert!(reason("negative").contains("negative"));
        assert!(reason("tts").contains("`input_cost_per_token`"));
        assert!(reason("dall-e-3").contains("image_generation"));
        assert!(reason("stringy").contains("a string, not a number"));
    }

    #[test]
    fn odd_model_names_are_escaped_and_read_back_exactly() {
        let imp = import(CATALOG, &opts()).unwrap();
        let name = "bedrock/*/1-month-commitment/odd \"name\"\\x@v1:0";
        let book = PriceBook::parse(&imp.toml, "imported").unwrap();
        let e = book
            .lookup("bedrock", name, t("2025-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(e.model, name);
        assert_eq!(
            e.rates,
            Rates([1_000_000, 1_000_000, 1_000_000, 2_000_000, 2_000_000])
        );
        // Control characters too.
        let json = r#"{"a\tb\u0001c\nd": {"litellm_provider": "p", "mode": "chat",
                       "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06}}"#;
        let imp = import(json, &opts()).unwrap();
        let book = PriceBook::parse(&imp.toml, "imported").unwrap();
        assert!(
            book.lookup("p", "a\tb\u{1}c\nd", t("2025-01-01T00:00:00Z"))
                .is_some()
        );
    }

    #[test]
    fn the_providers_filter_keeps_only_those_providers() {
        let imp = import(
            CATALOG,
            &ImportOptions {
                providers: Some(vec!["anthropic".into(), "gemini".into(), "nobody".into()]),
                ..opts()
            },
        )
        .unwrap();
        let book = PriceBook::parse(&imp.toml, "imported").unwrap();
        let mut got: Vec<_> = book
            .entries()
            .map(|e| (e.provider.as_str(), e.model.as_str()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("anthropic", "claude-x"),
                ("gemini", "gemini/gemini-2.5-pro")
            ]
        );
        assert_eq!(imp.unknown_providers, ["nobody"]);
        // Filtered-out entries are not reported as skipped; the ones without a provider are.
        let mut skipped: Vec<_> = imp.skipped.iter().map(|s| s.model.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["not-an-object", "sample_spec"]);
        assert_eq!(imp.filtered_out, 9);
    }

    #[test]
    fn the_book_is_sorted_by_provider_then_model_and_dated() {
        let imp = import(CATALOG, &opts()).unwrap();
        let pairs: Vec<(&str, &str)> = imp
            .toml
            .lines()
            .filter_map(|l| l.strip_prefix("provider = "))
            .zip(imp.toml.lines().filter_map(|l| l.strip_prefix("model = ")))
            .collect();
        let mut sorted = pairs.clone();
        sorted.sort();
        assert_eq!(pairs, sorted);
        assert_eq!(pairs[0].0, "\"anthropic\"");
        assert!(imp.toml.contains("effective from 2025-01-01T00:00:00Z"));
        assert!(
            imp.toml
                .contains("effective_from = \"2025-01-01T00:00:00Z\"")
        );
        // Same input, same bytes.
        assert_eq!(imp.toml, import(CATALOG, &opts()).unwrap().toml);
    }

    #[test]
    fn bad_input_is_refused_with_advice() {
        let e = import("{not json", &opts()).unwrap_err().to_string();
        assert!(e.contains("test.json") && e.contains("not JSON"), "{e}");
        let e = import("[1, 2]", &opts()).unwrap_err().to_string();
        assert!(e.contains("an array"), "{e}");
        let e = import(r#"{"a": {"b": 1}}"#, &opts())
            .unwrap_err()
            .to_string();
        assert!(e.contains("litellm_provider"), "{e}");
        let e = import(
            CATALOG,
            &ImportOptions {
                effective_from: "2025-01-01".into(),
                ..opts()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }
}
