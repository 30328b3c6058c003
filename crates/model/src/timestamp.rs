//! UTC timestamps as text: `YYYY-MM-DDTHH:MM:SSZ` written, and read back (with a bare date or
//! integer seconds since the epoch) where a config names a point in time. Shared by the server
//! (registry times) and the sidecar (provenance, holdouts), so neither links the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `YYYY-MM-DDTHH:MM:SSZ` for a point in time.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    rfc3339_secs(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (0 for earlier times).
pub fn rfc3339_secs(secs: i64) -> String {
    let secs = secs.max(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the epoch of `2026-03-10`, `2026-03-10T06:00:00Z`, or integer seconds.
pub fn parse(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    let wrong = || format!("`{text}` is not a UTC time (2026-03-10, 2026-03-10T06:00:00Z or seconds)");
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(wrong)?)),
        None => (text, None),
    };
    let number = |s: &str| s.parse::<i64>().map_err(|_| wrong());
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else { return Err(wrong()) };
    let (y, m, d) = (number(y)?, number(m)?, number(d)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(wrong());
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return Err(wrong());
    }
    let seconds = match time {
        None => 0,
        Some(t) => {
            let parts: Vec<&str> = t.split(':').collect();
            let [h, mi, s] = parts[..] else { return Err(wrong()) };
            let (h, mi, s) = (number(h)?, number(mi)?, number(s)?);
            if h > 23 || mi > 59 || s > 59 || h < 0 || mi < 0 || s < 0 {
                return Err(wrong());
            }
            h * 3600 + mi * 60 + s
        }
    };
    Ok(days * 86_400 + seconds)
}

/// Milliseconds since the epoch (0 for earlier times): the logs' clock.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A point in time from seconds since the epoch.
pub fn from_secs(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_767_225_600)), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn writes_and_reads_back() {
        for secs in [0, 86_399, 951_782_400, 1_773_100_800, 4_102_444_799] {
            assert_eq!(parse(&rfc3339_secs(secs)), Ok(secs));
        }
        assert_eq!(rfc3339_secs(1_773_100_800), "2026-03-10T00:00:00Z");
        assert_eq!(parse("2026-03-10"), Ok(1_773_100_800));
        assert_eq!(parse("2026-03-10T06:00:00Z"), Ok(1_773_100_800 + 6 * 3600));
        assert_eq!(parse("1773100800"), Ok(1_773_100_800));
        for bad in ["2026-02-30", "2026-13-01", "2026-03-10T06:00:00", "yesterday", "2026-03-10T25:00:00Z"] {
            assert!(parse(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
