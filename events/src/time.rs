//! Instants and tenant-local calendar buckets. Every `*_ts` is UTC epoch milliseconds; dates are
//! days since 1970-01-01 (Arrow `Date32`).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;

/// Parses an RFC 3339 timestamp into UTC epoch milliseconds (sub-millisecond digits truncated).
pub fn rfc3339_to_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// Formats UTC epoch milliseconds as RFC 3339 with millisecond precision.
pub fn ms_to_rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Where an instant falls on a tenant's local calendar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    /// The UTC instant at which the local hour containing `ts` began.
    pub hour_start_ms: i64,
    /// Local date, days since 1970-01-01.
    pub local_date: i32,
    /// Local hour of day, 0–23.
    pub local_hour: u32,
    /// Local ISO weekday, Monday = 0.
    pub weekday: u32,
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn to_date32(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// Formats a `Date32` as `YYYY-MM-DD`.
pub fn date32_to_string(days: i32) -> String {
    NaiveDate::from_num_days_from_ce_opt(days + UNIX_EPOCH_DAYS_FROM_CE)
        .map(|d| d.to_string())
        .unwrap_or_else(|| format!("day {days}"))
}

/// Local calendar position of `ts_ms` in `tz`. The hour start is found by stepping back the local
/// minutes and seconds, which is right for half- and quarter-hour offsets too.
pub fn local_time(tz: Tz, ts_ms: i64) -> LocalTime {
    let local = tz.timestamp_millis_opt(ts_ms).single().unwrap_or_else(|| {
        // Only unrepresentable instants get here; validation keeps ts within chrono's range.
        tz.timestamp_millis_opt(0).single().expect("epoch is representable in every zone")
    });
    let into_hour_ms = (local.minute() as i64 * 60 + local.second() as i64) * 1000 + ts_ms.rem_euclid(1000);
    LocalTime {
        hour_start_ms: ts_ms - into_hour_ms,
        local_date: to_date32(local.date_naive()),
        local_hour: local.hour(),
        weekday: local.weekday().num_days_from_monday(),
    }
}

/// Parses a duration such as `90s`, `30m`, `36h` or `14d` (a positive whole number and a unit)
/// into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number = &text[..text.len() - unit.len_utf8()];
    let unit_ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    let number: i64 = number.parse().ok().filter(|n| *n > 0)?;
    number.checked_mul(unit_ms)
}

/// The UTC instant at which local date `date32` begins in `tz` (the earliest such instant; a day
/// whose midnight a DST change skips begins at the first local time that exists).
pub fn local_day_start_ms(tz: Tz, date32: i32) -> i64 {
    let Some(date) = NaiveDate::from_num_days_from_ce_opt(date32 + UNIX_EPOCH_DAYS_FROM_CE) else { return 0 };
    (0..24 * 60)
        .step_by(15)
        .find_map(|minutes| {
            let local = date.and_hms_opt(minutes / 60, minutes % 60, 0)?;
            tz.from_local_datetime(&local).earliest().map(|t| t.timestamp_millis())
        })
        .unwrap_or_else(|| (date32 as i64) * 86_400_000)
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
/// The current instant as UTC epoch milliseconds (stamps `rejected.received_at`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub fn parse_date32(text: &str) -> Option<i32> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(to_date32)
}

/// The Monday that starts the ISO week containing `date32`.
pub fn iso_week_monday(date32: i32) -> i32 {
    // 1970-01-01 was a Thursday (weekday 3 counting Monday as 0).
    date32 - (date32 + 3).rem_euclid(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kolkata_hours_start_at_half_past_utc() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let ts = rfc3339_to_ms("2026-03-02T04:29:59.999Z").unwrap(); // 09:59:59.999 local
        let local = local_time(tz, ts);
        assert_eq!(local.local_hour, 9);
        assert_eq!(local.hour_start_ms, rfc3339_to_ms("2026-03-02T03:30:00Z").unwrap());
        let next = local_time(tz, ts + 1);
        assert_eq!(next.local_hour, 10);
        assert_eq!(next.hour_start_ms, ts + 1);
    }

    #[test]
    fn local_date_follows_the_zone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let ts = rfc3339_to_ms("2026-01-01T03:00:00Z").unwrap();
        assert_eq!(date32_to_string(local_time(tz, ts).local_date), "2025-12-31");
    }

    #[test]
    fn local_days_start_at_local_midnight() {
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        let day = parse_date32("2026-03-02").unwrap();
        assert_eq!(local_day_start_ms(kolkata, day), rfc3339_to_ms("2026-03-01T18:30:00Z").unwrap());
        // Santiago skips 00:00–01:00 when DST starts (2026-09-06): the day begins at 01:00 local.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let day = parse_date32("2026-09-06").unwrap();
        assert_eq!(local_day_start_ms(santiago, day), rfc3339_to_ms("2026-09-06T04:00:00Z").unwrap());
        assert_eq!(parse_date32("2026-02-30"), None);
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration_ms("14d"), Some(14 * 86_400_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("30"), None);
        assert_eq!(parse_duration_ms("0d"), None);
        assert_eq!(parse_duration_ms("-3h"), None);
        assert_eq!(parse_duration_ms("d"), None);
        assert_eq!(parse_duration_ms("30д"), None);
        assert_eq!(parse_duration_ms(""), None);
    }

    #[test]
    fn iso_week_starts_on_monday_across_a_year_boundary() {
        let thursday_2026_01_01 = to_date32(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(date32_to_string(iso_week_monday(thursday_2026_01_01)), "2025-12-29");
        let monday = to_date32(NaiveDate::from_ymd_opt(2025, 12, 29).unwrap());
        assert_eq!(iso_week_monday(monday), monday);
        let sunday = to_date32(NaiveDate::from_ymd_opt(2026, 1, 4).unwrap());
        assert_eq!(iso_week_monday(sunday), monday);
    }
}
