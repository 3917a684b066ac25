//! `tokenmeter prices import-litellm`: read LiteLLM's price catalog, write a price book v1 file
//! atomically (temporary file, then rename) and summarise what was written and left out.
//!
//! The conversion itself is `tokenmeter_aggregate::litellm` (pure); this file only does the
//! file I/O and the printing.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenmeter_aggregate::litellm::{self, ImportOptions, SkipKind};

#[derive(Args)]
pub struct ImportLitellmArgs {
    /// LiteLLM's model_prices_and_context_window.json (the Python package ships it as
    /// litellm/model_prices_and_context_window_backup.json).
    file: PathBuf,
    /// Price book to write (TOML); replaced atomically if it exists.
    #[arg(long, value_name = "FILE.toml")]
    out: PathBuf,
    /// Import only these `litellm_provider` values, e.g. openai,anthropic,gemini.
    #[arg(long, value_delimiter = ',', value_name = "PROVIDER,…")]
    providers: Option<Vec<String>>,
    /// RFC 3339 time every entry is in force from. LiteLLM carries no dates; pass
    /// --effective-from.
    #[arg(long, value_name = "RFC3339", default_value = "1970-01-01T00:00:00Z")]
    effective_from: String,
    /// List every skipped model with its reason.
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(a: ImportLitellmArgs) -> Result<()> {
    let json = std::fs::read_to_string(&a.file).with_context(|| {
        format!(
            "reading {}: pass LiteLLM's model_prices_and_context_window.json (e.g. \
             litellm/model_prices_and_context_window_backup.json inside the installed litellm \
             Python package)",
            a.file.display()
        )
    })?;
    let imp = litellm::import(
        &json,
        &ImportOptions {
            effective_from: a.effective_from.clone(),
            providers: a.providers.clone(),
            origin: a.file.display().to_string(),
        },
    )?;
    for p in &imp.unknown_providers {
        eprintln!(
            "warning: --providers {p:?} matches no entry's litellm_provider (names look like \
             openai, anthropic, gemini, vertex_ai-language-models, deepseek)"
        );
    }
    if imp.written == 0 {
        bail!(
            "no entry to write from {} ({} skipped, {} of other providers); {} not written",
            a.file.display(),
            imp.skipped.len(),
            imp.filtered_out,
            a.out.display()
        );
    }
    write_atomically(&a.out, imp.toml.as_bytes())?;

    outln!(
        "wrote {} price entries to {} (effective from {})",
        imp.written,
        a.out.display(),
        a.effective_from
    );
    if imp.filtered_out > 0 {
        outln!(
            "left out {} entries of providers not in --providers",
            imp.filtered_out
        );
    }
    let mut by_kind: BTreeMap<SkipKind, usize> = BTreeMap::new();
    for s in &imp.skipped {
        *by_kind.entry(s.kind).or_default() += 1;
    }
    outln!("skipped {} entries:", imp.skipped.len());
    for (kind, n) in &by_kind {
        outln!("  {n:>5}  {}", kind.describe());
    }
    if !imp.tiered.is_empty() {
        outln!(
            "{} written entries also have long-context tiers (…_above_200k_tokens) a price book \
             cannot express: their base rates were used",
            imp.tiered.len()
        );
    }
    if a.verbose {
        outln!("skipped models:");
        for s in &imp.skipped {
            outln!("  {:?}: {}", s.model, s.reason);
        }
        if !imp.tiered.is_empty() {
            outln!("models with tiers (base rates used):");
            for m in &imp.tiered {
                outln!("  {m:?}");
            }
        }
    } else if !imp.skipped.is_empty() {
        outln!("(--verbose lists each skipped model and why)");
    }
    Ok(())
}

/// Write `bytes` to a temporary file beside `path`, sync it, then rename it over `path`: a
/// reader sees the old book or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("--out {} must name a file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp).with_context(|| {
            format!(
                "creating {} (does the directory of --out exist and is it writable?)",
                tmp.display()
            )
        })?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
