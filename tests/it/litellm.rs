//! `tokenmeter prices import-litellm` on LiteLLM's real catalog, the one the PyPI `litellm`
//! wheel ships (tests/run.sh installs the pinned version): known models' prices, then every
//! entry against an independent Python oracle (tests/it/litellm_oracle.py, Python's json and
//! decimal, no shared code).
//!
//! Not here: the conversion's edge cases on hand-written catalogs (unit tests in
//! aggregate/src/litellm.rs).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokenmeter_aggregate::Rates;
use tokenmeter_aggregate::prices::PriceBook;

/// The litellm release whose catalog the known prices below were read from (keep equal to
/// LITELLM_VERSION in tests/run.sh).
const LITELLM_VERSION: &str = "1.109.1";
const EFFECTIVE_FROM: &str = "2026-01-01T00:00:00Z";

fn install_advice() -> String {
    format!(
        "install it with: python3 -m pip install --no-deps 'litellm=={LITELLM_VERSION}' \
         (tests/run.sh does)"
    )
}

/// The catalog inside the installed litellm package, found without importing litellm.
fn catalog() -> PathBuf {
    let script = "import importlib.metadata as md, importlib.util as u\n\
                  s = u.find_spec('litellm')\n\
                  print(md.version('litellm') if s else '')\n\
                  print(s.submodule_search_locations[0] if s else '')\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {}", install_advice()));
    assert!(
        out.status.success(),
        "python3 failed looking for litellm: {}; {}",
        String::from_utf8_lossy(&out.stderr),
        install_advice()
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default();
    let dir = lines.next().unwrap_or_default();
    assert!(
        !dir.is_empty(),
        "the litellm Python package is not installed; {}",
        install_advice()
    );
    assert_eq!(
        version,
        LITELLM_VERSION,
        "litellm {version} is installed but the known prices here are from {LITELLM_VERSION}; {}",
        install_advice()
    );
    let path = Path::new(dir).join("model_prices_and_context_window_backup.json");
    assert!(
        path.is_file(),
        "{} is missing from the litellm package; {}",
        path.display(),
        install_advice()
    );
    path
}

fn import(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
        .args(["prices", "import-litellm"])
        .args(args)
        .output()
        .expect("run tokenmeter");
    assert!(
        out.status.success(),
        "tokenmeter prices import-litellm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[derive(Deserialize)]
struct Oracle {
    total: usize,
    book: Vec<OracleEntry>,
    skipped: Vec<String>,
}

#[derive(Deserialize)]
struct OracleEntry {
    provider: String,
    model: String,
    rates: [i64; 5],
}

fn oracle(catalog: &Path) -> Oracle {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/litellm_oracle.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(catalog)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the oracle prints JSON")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// The models listed under "skipped models:" in the verbose output, each line `  "model": why`.
fn skipped_models(stdout: &str, expected: &[String]) -> Vec<String> {
    let by_prefix: HashMap<String, &String> =
        expected.iter().map(|m| (format!("  {m:?}: "), m)).collect();
    let list = stdout
        .split_once("skipped models:\n")
        .expect("--verbose lists the skipped models")
        .1;
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            // The model is a Debug-quoted string: try each `": ` as its end.
            l.match_indices("\": ")
                .find_map(|(i, _)| by_prefix.get(&l[..i + 3]).map(|m| (*m).clone()))
                .unwrap_or_else(|| panic!("skipped line names no model the oracle skips: {l}"))
        })
        .collect()
}

#[test]
fn the_real_litellm_catalog_imports_exactly() {
    let catalog = catalog();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("litellm.toml");
    let stdout = import(&[
        catalog.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--effective-from",
        EFFECTIVE_FROM,
        "--verbose",
    ]);
    let book = PriceBook::load(&out).unwrap();
    assert_eq!(book.currency, "USD");
    let t = at(EFFECTIVE_FROM);
    let rates = |provider: &str, model: &str| {
        book.lookup(provider, model, t)
            .unwrap_or_else(|| panic!("{provider}/{model} is not in the imported book"))
            .rates
    };

    // (a) Known prices, read from litellm 1.109.1's model_prices_and_context_window_backup.json.
    // Rates are micro-units per million: input, cache_read, cache_write, output, reasoning.
    // "gpt-4o": openai, input 2.5e-06, cache_read 1.25e-06, output 1e-05; no cache-creation
    // or reasoning price, so cache_write = input and reasoning = output.
    assert_eq!(
        rates("openai", "gpt-4o"),
        Rates([2_500_000, 1_250_000, 2_500_000, 10_000_000, 10_000_000])
    );
    // "claude-sonnet-4-5": anthropic, input 3e-06, cache_read 3e-07, cache_creation 3.75e-06,
    // output 1.5e-05.
    assert_eq!(
        rates("anthropic", "claude-sonnet-4-5"),
        Rates([3_000_000, 300_000, 3_750_000, 15_000_000, 15_000_000])
    );
    // "gemini/gemini-2.5-pro": gemini, input 1.25e-06, cache_read 1.25e-07, output 1e-05 (its
    // above-200k-tokens tier is not expressible; the base rates are used).
    assert_eq!(
        rates("gemini", "gemini/gemini-2.5-pro"),
        Rates([1_250_000, 125_000, 1_250_000, 10_000_000, 10_000_000])
    );
    // "deepseek/deepseek-chat": deepseek, input 2.8e-07, cache_read 2.8e-08, cache_creation 0.0,
    // output 4.2e-07.
    assert_eq!(
        rates("deepseek", "deepseek/deepseek-chat"),
        Rates([280_000, 28_000, 0, 420_000, 420_000])
    );
    // "dashscope/qwen-turbo": dashscope, input 5e-08, output 2e-07, reasoning 5e-07.
    assert_eq!(
        rates("dashscope", "dashscope/qwen-turbo"),
        Rates([50_000, 50_000, 50_000, 200_000, 500_000])
    );
    // Nothing before --effective-from.
    assert!(
        book.lookup("openai", "gpt-4o", at("2025-12-31T23:59:59Z"))
            .is_none()
    );
    // "novita/deepseek/deepseek-v4-pro": input 1.6000000000000001e-06, a float artefact of 1.6
    // that would need 16 decimals per million: skipped, the reason names the field.
    assert!(
        stdout.contains(
            "  \"novita/deepseek/deepseek-v4-pro\": `input_cost_per_token` (the book's `input`)"
        ),
        "{stdout}"
    );

    // (b) Every entry against the independent oracle.
    let want = oracle(&catalog);
    assert_eq!(want.total, want.book.len() + want.skipped.len());
    assert_eq!(
        book.len(),
        want.book.len(),
        "entries in the book vs the oracle's"
    );
    let mut wrong = Vec::new();
    for e in &want.book {
        match book.lookup(&e.provider, &e.model, t) {
            Some(got) if got.rates == Rates(e.rates) => {}
            got => wrong.push(format!(
                "{}/{}: book {:?}, oracle {:?}",
                e.provider,
                e.model,
                got.map(|g| g.rates),
                e.rates
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} entries differ from the oracle:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every entry the oracle cannot convert is listed as skipped, once; nothing else is.
    let mut listed = skipped_models(&stdout, &want.skipped);
    let mut skipped = want.skipped.clone();
    listed.sort();
    skipped.sort();
    assert_eq!(listed, skipped, "skipped models vs the oracle's");
    assert!(
        stdout.contains(&format!("wrote {} price entries", want.book.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("skipped {} entries:", want.skipped.len())),
        "{stdout}"
    );

    // --providers keeps exactly the oracle's entries of those providers.
    let some = dir.path().join("some.toml");
    import(&[
        catalog.to_str().unwrap(),
        "--out",
        some.to_str().unwrap(),
        "--providers",
        "openai,anthropic",
        "--effective-from",
        EFFECTIVE_FROM,
    ]);
    let some = PriceBook::load(&some).unwrap();
    let mut per_provider: BTreeMap<&str, usize> = BTreeMap::new();
    for e in some.entries() {
        *per_provider.entry(&e.provider).or_default() += 1;
        // The same entry as in the full book (the line it sits on differs).
        let full = book
            .lookup(&e.provider, &e.model, t)
            .expect("in the full book");
        assert_eq!(
            (e.rates, &e.currency, e.effective_from),
            (full.rates, &full.currency, full.effective_from)
        );
    }
    let mut want_per_provider: BTreeMap<&str, usize> = BTreeMap::new();
    for e in want
        .book
        .iter()
        .filter(|e| e.provider == "openai" || e.provider == "anthropic")
    {
        *want_per_provider.entry(&e.provider).or_default() += 1;
    }
    assert_eq!(per_provider, want_per_provider);
}

#[test]
fn import_errors_read_like_advice() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenmeter"))
            .args(["prices", "import-litellm"])
            .args(args)
            .output()
            .expect("run tokenmeter");
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    };
    let out = dir.path().join("book.toml");
    let out = out.to_str().unwrap();
    let missing = dir.path().join("missing.json");
    let e = run(&[missing.to_str().unwrap(), "--out", out]);
    assert!(
        e.contains("model_prices_and_context_window.json") && e.contains("No such file"),
        "{e}"
    );
    let not_json = dir.path().join("prices.toml");
    std::fs::write(&not_json, "currency = \"USD\"\n").unwrap();
    let e = run(&[not_json.to_str().unwrap(), "--out", out]);
    assert!(e.contains("not JSON"), "{e}");
    let json = dir.path().join("c.json");
    std::fs::write(
        &json,
        r#"{"m": {"litellm_provider": "p", "mode": "chat", "input_cost_per_token": 1e-06,
                  "output_cost_per_token": 2e-06}}"#,
    )
    .unwrap();
    let e = run(&[
        json.to_str().unwrap(),
        "--out",
        out,
        "--effective-from",
        "2026-01-01",
    ]);
    assert!(e.contains("RFC 3339"), "{e}");
    let e = run(&[json.to_str().unwrap(), "--out", out, "--providers", "q"]);
    assert!(e.contains("no entry to write"), "{e}");
    assert!(!Path::new(out).exists(), "nothing is written on error");
}
