//! Local calendar days as UTC instants: where a day starts in a time zone (DST gaps and folds
//! included), and whether the hourly rollups can answer a report over a range.
//!
//! Not here: SQL. The reports assign rows to local periods in SQL (`to_local_time`), which puts
//! every instant on the local date its wall clock shows; [`day_start`] is the first instant of that
//! date, so both agree.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The first instant of local date `date` in `tz`.
///
/// Usually local midnight. When midnight is skipped by a DST gap the day starts when the gap ends;
/// when midnight happens twice (a fold) it starts at the first one.
pub fn day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    if let Some(t) = tz.from_local_datetime(&midnight).earliest() {
        return t.with_timezone(&Utc);
    }
    // A gap: the first wall-clock minute that exists. Gaps end on a minute in every tz database
    // zone; a gap never lasts a day.
    for minutes in 1..=24 * 60 {
        if let Some(t) = tz
            .from_local_datetime(&(midnight + Duration::minutes(minutes)))
            .earliest()
        {
            return t.with_timezone(&Utc);
        }
    }
    // Unreachable with real zones: midnight at the offset in force at that instant of UTC.
    let offset = chrono::Offset::fix(&tz.offset_from_utc_datetime(&midnight));
    (midnight - Duration::seconds(i64::from(offset.local_minus_utc()))).and_utc()
}

/// Whether `t` is the start of a UTC hour.
pub fn on_utc_hour(t: DateTime<Utc>) -> bool {
    t.timestamp().rem_euclid(3600) == 0 && t.timestamp_subsec_nanos() == 0
}

/// The first of `dates` whose local day does not start on a UTC hour, with that start: a rollup
/// hour would straddle it, so the rollups cannot answer a report with a boundary there.
pub fn first_off_hour_day(
    tz: Tz,
    dates: impl IntoIterator<Item = NaiveDate>,
) -> Option<(NaiveDate, DateTime<Utc>)> {
    dates
        .into_iter()
        .map(|d| (d, day_start(tz, d)))
        .find(|(_, t)| !on_utc_hour(*t))
}

/// Every date from `from` to `to`, both included.
pub fn days_inclusive(from: NaiveDate, to: NaiveDate) -> impl Iterator<Item = NaiveDate> {
    from.iter_days().take_while(move |d| *d <= to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn day_starts_follow_dst() {
        let ny = chrono_tz::America::New_York;
        assert_eq!(day_start(ny, d("2026-03-08")), utc("2026-03-08T05:00:00Z")); // EST
        assert_eq!(day_start(ny, d("2026-03-09")), utc("2026-03-09T04:00:00Z")); // EDT
        assert_eq!(day_start(ny, d("2026-11-01")), utc("2026-11-01T04:00:00Z")); // EDT
        assert_eq!(day_start(ny, d("2026-11-02")), utc("2026-11-02T05:00:00Z")); // EST
        let sh = chrono_tz::Asia::Shanghai;
        assert_eq!(day_start(sh, d("2026-11-01")), utc("2026-10-31T16:00:00Z"));
        let kolkata = chrono_tz::Asia::Kolkata;
        assert_eq!(
            day_start(kolkata, d("2026-11-01")),
            utc("2026-10-31T18:30:00Z")
        );
        // Havana skips midnight when DST starts (2026-03-08 00:00 → 01:00, -05:00 → -04:00).
        let havana = chrono_tz::America::Havana;
        assert_eq!(
            day_start(havana, d("2026-03-08")),
            utc("2026-03-08T05:00:00Z")
        );
        // ... and has midnight twice when it ends (2026-11-01 01:00 → 00:00): the first counts.
        assert_eq!(
            day_start(havana, d("2026-11-01")),
            utc("2026-11-01T04:00:00Z")
        );
    }

    #[test]
    fn off_hour_days_are_found() {
        let days = || days_inclusive(d("2026-01-01"), d("2026-12-31"));
        assert_eq!(first_off_hour_day(chrono_tz::UTC, days()), None);
        assert_eq!(
            first_off_hour_day(chrono_tz::America::New_York, days()),
            None
        );
        assert_eq!(
            first_off_hour_day(chrono_tz::Asia::Kolkata, days()),
            Some((d("2026-01-01"), utc("2025-12-31T18:30:00Z")))
        );
        // Lord Howe is +10:30 in winter and +11 in summer: only the winter days are off the hour.
        let lh = chrono_tz::Australia::Lord_Howe;
        assert_eq!(
            first_off_hour_day(lh, days_inclusive(d("2026-01-01"), d("2026-01-31"))),
            None
        );
        assert_eq!(
            first_off_hour_day(lh, days()).map(|(d, _)| d),
            Some(d("2026-04-06")),
            "DST ends on 2026-04-05 at 02:00"
        );
    }
}
