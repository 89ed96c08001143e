//! How far the server trusts a device's clock.
//!
//! A phone's times (`started_at`, `ended_at`, a casualty's `uasc.handed_over_at`) are whatever
//! its clock said, and a phone whose clock fell back to a factory date, or a hostile device, can
//! write any year. The server's own `received_at` (when the encounter's first change arrived) is
//! the time it knows. A device time is taken as it is only within a plausible offline gap before
//! that first receipt ([`MAX_OFFLINE_GAP_DAYS`]: days of patrol without signal, not years) and not
//! after the server's latest time it is compared with (plus [`FUTURE_SLACK_HOURS`] for a clock a
//! little fast). Anything else is `clock_suspect`: flagged for a person to look at, and never the
//! start of a retention period.

use chrono::{DateTime, Duration, Utc};

/// How long before the server first received an encounter its device's times may be: the
/// longest plausible time a phone stays without signal.
pub const MAX_OFFLINE_GAP_DAYS: i64 = 30;

/// How far after the server's time a device time may be (a clock a little fast, a time zone
/// written wrong).
pub const FUTURE_SLACK_HOURS: i64 = 24;

/// The marker a problem's message starts with when a device time is implausible (listed by
/// `GET /v1/encounters?flagged=true`).
pub const CLOCK_SUSPECT: &str = "clock_suspect";

/// An RFC 3339 time in UTC, or `None` if `text` is not one.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a device's `time` is plausible for an encounter the server first received at
/// `first_received`, judged at server time `server_now` (not later than it, give or take
/// [`FUTURE_SLACK_HOURS`]).
pub fn plausible(
    time: DateTime<Utc>,
    first_received: DateTime<Utc>,
    server_now: DateTime<Utc>,
) -> bool {
    time >= first_received - Duration::days(MAX_OFFLINE_GAP_DAYS)
        && time <= server_now + Duration::hours(FUTURE_SLACK_HOURS)
}

/// The message of a `clock_suspect` problem for a device time.
pub fn suspect_message(time: &str, first_received: &str) -> String {
    format!(
        "{CLOCK_SUSPECT}: {time} is more than {MAX_OFFLINE_GAP_DAYS} days before the server first received this encounter ({first_received}) or in the future; it is not used for retention: check the phone's clock and correct the value"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse(text).unwrap()
    }

    #[test]
    fn a_device_time_counts_within_the_offline_gap_and_not_years_before_nor_in_the_future() {
        let received = at("2026-11-28T10:00:00Z");
        assert!(plausible(at("2026-11-01T00:00:00Z"), received, received));
        assert!(!plausible(at("2026-10-01T00:00:00Z"), received, received));
        assert!(!plausible(at("2016-03-01T00:00:00Z"), received, received));
        assert!(plausible(at("2026-11-29T09:00:00Z"), received, received));
        assert!(!plausible(at("2026-12-01T00:00:00Z"), received, received));
    }
}
