//! Closed months: `tokenmeter close --month YYYY-MM` freezes a month's invoices at the lake's
//! committed offsets of that moment (its cut). Events of the month committed after the cut are
//! never added to it: they are adjustments of the next open month ([`adjustment_windows`]).
//!
//! Months close in order (each close is the month after the last one) and in one time zone, so
//! the closed months are a contiguous run and every late event has exactly one month whose
//! invoice carries it: the first month closed after it arrived, or the first open month.
//!
//! Not here: pricing (see [`crate::invoice`]).

use crate::lake_store::{CommittedOffsets, read_records};
use crate::localtime::day_start;
use crate::{Error, Result};
use chrono::{DateTime, Months, NaiveDate, Utc};
use chrono_tz::Tz;
use std::path::Path;
use tokenmeter_schemas::layout::{CLOSES_DIR, Close, CutEntry};

/// Parse `YYYY-MM` into the month's first day.
pub fn parse_month(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d")
        .map_err(|_| Error::Period(format!("month {s:?} must be written YYYY-MM, e.g. 2026-10")))
}

/// `YYYY-MM` of a month's first day.
pub fn month_name(m: NaiveDate) -> String {
    m.format("%Y-%m").to_string()
}

/// The month after `m`.
pub fn next_month(m: NaiveDate) -> NaiveDate {
    m + Months::new(1)
}

/// The UTC instants `[start, end)` of month `m` in `tz`.
pub fn month_range(m: NaiveDate, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    (day_start(tz, m), day_start(tz, next_month(m)))
}

/// The cut of a close as committed offsets.
pub fn cut_offsets(cut: &[CutEntry]) -> CommittedOffsets {
    cut.iter()
        .map(|e| ((e.topic.clone(), e.partition), e.committed_through))
        .collect()
}

/// Committed offsets as a cut record.
pub fn cut_entries(c: &CommittedOffsets) -> Vec<CutEntry> {
    let mut v: Vec<CutEntry> = c
        .iter()
        .map(|((topic, partition), &through)| CutEntry {
            topic: topic.clone(),
            partition: *partition,
            committed_through: through,
        })
        .collect();
    v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    v
}

/// Every close of the lake, by month.
pub fn read_closes(root: &Path) -> Result<Vec<Close>> {
    let mut out: Vec<Close> = read_records(&root.join(CLOSES_DIR), "close record", |_| true)?;
    out.sort_by(|a, b| a.month.cmp(&b.month));
    Ok(out)
}

/// The closes' time zone, checked against `tz`: invoices of a lake with closed months are cut
/// in the zone the months were closed in.
pub fn check_tz(closes: &[Close], tz: Tz) -> Result<()> {
    match closes.first() {
        Some(c) if c.tz != tz.name() => Err(Error::Period(format!(
            "months of this lake are closed in time zone {}; pass --tz {} (invoices and closes must cut months at the same midnights)",
            c.tz, c.tz
        ))),
        _ => Ok(()),
    }
}

/// What `close` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The month is closed now.
    Now(Close),
    /// It was closed before; nothing changed.
    Already(Close),
}

/// Close month `m` in `tz` at the lake's current cut.
pub fn close_month(
    root: &Path,
    m: NaiveDate,
    tz: Tz,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Closed> {
    let closes = read_closes(root)?;
    let name = month_name(m);
    if let Some(c) = closes.iter().find(|c| c.month == name) {
        return Ok(Closed::Already(c.clone()));
    }
    check_tz(&closes, tz)?;
    let (_, end) = month_range(m, tz);
    if end > now {
        return Err(Error::Period(format!(
            "{name} is not over: it ends at {end} ({} in {}); close it after that",
            end.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
            tz.name()
        )));
    }
    if let Some(last) = closes.last() {
        let last_m = parse_month(&last.month)?;
        let want = next_month(last_m);
        if m != want {
            return Err(Error::Period(format!(
                "months close in order: the last closed month is {}, so the next to close is {}{}",
                last.month,
                month_name(want),
                if m < last_m {
                    format!(" ({name} is before the first closed month and stays open)")
                } else {
                    String::new()
                }
            )));
        }
    }
    let cut = cut_entries(&CommittedOffsets::read(root)?);
    let close = Close {
        version: 1,
        month: name.clone(),
        tz: tz.name().to_string(),
        closed_at: now,
        closed_by: by.to_string(),
        cut,
    };
    let dir = root.join(CLOSES_DIR);
    let text = serde_json::to_string_pretty(&close).expect("serializable");
    write_atomic(&dir, &format!("{name}.json"), text.as_bytes())?;
    Ok(Closed::Now(close))
}

/// Write `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let err = |path: &Path, e: std::io::Error| Error::LakeState {
        path: path.to_path_buf(),
        message: format!("cannot write it: {e}"),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| err(&tmp, e))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

/// Where the late events an invoice of month `m` carries come from: for each earlier closed
/// month, its usage seen at the `after` cut minus its usage seen at the `before` cut (`None`:
/// as committed now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdjustmentWindows {
    pub months: Vec<NaiveDate>,
    pub before: CommittedOffsets,
    pub after: Option<CommittedOffsets>,
}

/// The cut `m`'s own usage is read at (its close's), or `None` (open: as committed now).
pub fn own_cut(closes: &[Close], m: NaiveDate) -> Option<CommittedOffsets> {
    let name = month_name(m);
    closes
        .iter()
        .find(|c| c.month == name)
        .map(|c| cut_offsets(&c.cut))
}

/// The adjustment windows of month `m`: a closed month carries the late events committed
/// between the previous close and its own; the first open month carries those committed after
/// the last close; other months carry none.
pub fn adjustment_windows(closes: &[Close], m: NaiveDate) -> Result<Option<AdjustmentWindows>> {
    let name = month_name(m);
    let months = |upto: usize| -> Result<Vec<NaiveDate>> {
        closes[..upto]
            .iter()
            .map(|c| parse_month(&c.month))
            .collect()
    };
    if let Some(i) = closes.iter().position(|c| c.month == name) {
        if i == 0 {
            return Ok(None);
        }
        return Ok(Some(AdjustmentWindows {
            months: months(i)?,
            before: cut_offsets(&closes[i - 1].cut),
            after: Some(cut_offsets(&closes[i].cut)),
        }));
    }
    match closes.last() {
        Some(last) if next_month(parse_month(&last.month)?) == m => Ok(Some(AdjustmentWindows {
            months: months(closes.len())?,
            before: cut_offsets(&last.cut),
            after: None,
        })),
        _ => Ok(None),
    }
}

/// Whether the UTC dates `[from, to)` touch a closed month.
pub fn touches_closed(closes: &[Close], from: NaiveDate, to: NaiveDate) -> Result<Option<String>> {
    let (a, b) = (
        from.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
        to.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
    );
    for c in closes {
        let tz: Tz = c.tz.parse().map_err(|_| {
            Error::Period(format!(
                "close {} has an unknown time zone {:?}",
                c.month, c.tz
            ))
        })?;
        let (s, e) = month_range(parse_month(&c.month)?, tz);
        if s < b && a < e {
            return Ok(Some(c.month.clone()));
        }
    }
    Ok(None)
}
