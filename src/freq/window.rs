//! Cap windows: which impression times a frequency cap counts at a given instant.
//!
//! Civil-date math is done by hand (Howard Hinnant's `days_from_civil` and
//! `civil_from_days`, proleptic Gregorian calendar) so the crate needs no date
//! library; all arithmetic saturates instead of overflowing on hostile inputs.

const SECONDS_PER_DAY: i64 = 86_400;

/// How a cap window is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Calendar {
    /// The last `window_seconds` before the instant (0 = everything retained).
    #[default]
    Rolling,
    /// Since local midnight at the cap's UTC offset.
    Day,
    /// Since local Monday 00:00 at the cap's UTC offset.
    Week,
    /// Since local 00:00 on the first day of the month at the cap's UTC offset.
    Month,
}

/// The window of one frequency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapWindow {
    /// Length of a rolling window; 0 = every retained impression. Ignored by
    /// calendar windows.
    pub window_seconds: u32,
    /// Rolling or aligned to a calendar period.
    pub calendar: Calendar,
    /// Offset of the local clock from UTC for calendar windows, e.g. -300 for
    /// New York in winter. Ignored by rolling windows.
    pub utc_offset_minutes: i32,
}

impl CapWindow {
    /// The impression times this cap counts at `at_unix_seconds`, as
    /// `(after_exclusive, until_inclusive)`: a time `t` counts when
    /// `after_exclusive < t <= until_inclusive`.
    ///
    /// Rolling: `at - window < t <= at`; window 0 counts everything retained,
    /// `at - retention < t <= at`. Calendar: `start_of_current_period <= t <= at`,
    /// the period being computed on the local clock at `utc_offset_minutes`.
    pub fn count_range(&self, at_unix_seconds: i64, retention_seconds: i64) -> (i64, i64) {
        let at = at_unix_seconds;
        match self.calendar {
            Calendar::Rolling if self.window_seconds == 0 => {
                (at.saturating_sub(retention_seconds.max(0)), at)
            }
            Calendar::Rolling => (at.saturating_sub(i64::from(self.window_seconds)), at),
            calendar => {
                let start = period_start_unix_seconds(at, calendar, self.utc_offset_minutes);
                (start.saturating_sub(1), at)
            }
        }
    }
}

/// The first second of the calendar period holding `at_unix_seconds`, on the
/// local clock at `utc_offset_minutes`. `calendar` must not be `Rolling`.
pub fn period_start_unix_seconds(
    at_unix_seconds: i64,
    calendar: Calendar,
    utc_offset_minutes: i32,
) -> i64 {
    let offset_seconds = i64::from(utc_offset_minutes) * 60;
    let local_seconds = at_unix_seconds.saturating_add(offset_seconds);
    let local_day = local_seconds.div_euclid(SECONDS_PER_DAY);
    let start_day = match calendar {
        Calendar::Rolling | Calendar::Day => local_day,
        Calendar::Week => local_day - weekday_from_monday(local_day),
        Calendar::Month => {
            let (year, month, _day) = civil_from_days(local_day);
            days_from_civil(year, month, 1)
        }
    };
    start_day
        .saturating_mul(SECONDS_PER_DAY)
        .saturating_sub(offset_seconds)
}

/// Day of the week of a day number (days since 1970-01-01), Monday = 0.
pub fn weekday_from_monday(days_since_epoch: i64) -> i64 {
    // 1970-01-01 was a Thursday (Monday-based index 3).
    (days_since_epoch + 3).rem_euclid(7)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1..=12,
/// `day` 1..=31). Howard Hinnant's algorithm.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month);
    let day = i64::from(day);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400; // [0, 399]
    let month_from_march = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1; // [0, 365]
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian `(year, month, day)` of a day number (days since
/// 1970-01-01). Inverse of [`days_from_civil`].
pub fn civil_from_days(days_since_epoch: i64) -> (i64, u32, u32) {
    let shifted = days_since_epoch + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097; // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> i64 {
        days_from_civil(year, month, day) * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second
    }

    fn calendar_window(calendar: Calendar, utc_offset_minutes: i32) -> CapWindow {
        CapWindow {
            window_seconds: 0,
            calendar,
            utc_offset_minutes,
        }
    }

    #[test]
    fn civil_round_trips_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            days_from_civil(2024, 3, 1) - days_from_civil(2024, 2, 28),
            2
        );
        assert_eq!(
            days_from_civil(2023, 3, 1) - days_from_civil(2023, 2, 28),
            1
        );
        assert_eq!(
            days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 28),
            1
        );
        assert_eq!(
            days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28),
            2
        );
        // 2026-11-26 is a Thursday.
        assert_eq!(weekday_from_monday(days_from_civil(2026, 11, 26)), 3);
        assert_eq!(weekday_from_monday(days_from_civil(2024, 1, 1)), 0);
        for day in -800_000..800_000 {
            let (year, month, day_of_month) = civil_from_days(day);
            assert_eq!(days_from_civil(year, month, day_of_month), day);
        }
    }

    #[test]
    fn rolling_window_counts_the_last_window_seconds() {
        let window = CapWindow {
            window_seconds: 3600,
            ..CapWindow::default()
        };
        assert_eq!(window.count_range(10_000, 86_400), (6_400, 10_000));
        let lifetime = CapWindow::default();
        assert_eq!(
            lifetime.count_range(10_000, 86_400),
            (10_000 - 86_400, 10_000)
        );
        assert_eq!(
            lifetime.count_range(i64::MIN + 5, 86_400),
            (i64::MIN, i64::MIN + 5)
        );
    }

    #[test]
    fn day_window_starts_at_local_midnight() {
        let at = unix(2024, 3, 10, 2, 30, 0);
        let utc = calendar_window(Calendar::Day, 0);
        assert_eq!(utc.count_range(at, 0), (unix(2024, 3, 10, 0, 0, 0) - 1, at));
        // UTC-5: it is 21:30 on March 9 locally; the local day began at 05:00 UTC March 9.
        let new_york = calendar_window(Calendar::Day, -300);
        assert_eq!(new_york.count_range(at, 0).0, unix(2024, 3, 9, 5, 0, 0) - 1);
        // UTC+5:30: it is 08:00 on March 10; the local day began at 18:30 UTC March 9.
        let india = calendar_window(Calendar::Day, 330);
        assert_eq!(india.count_range(at, 0).0, unix(2024, 3, 9, 18, 30, 0) - 1);
        // Exactly at local midnight the new day has begun.
        let midnight = unix(2024, 3, 10, 0, 0, 0);
        assert_eq!(utc.count_range(midnight, 0), (midnight - 1, midnight));
    }

    #[test]
    fn week_window_starts_on_local_monday() {
        // Sunday 2024-03-10 23:30 UTC; at UTC+1 it is Monday 00:30 already.
        let at = unix(2024, 3, 10, 23, 30, 0);
        assert_eq!(
            calendar_window(Calendar::Week, 0).count_range(at, 0).0,
            unix(2024, 3, 4, 0, 0, 0) - 1
        );
        assert_eq!(
            calendar_window(Calendar::Week, 60).count_range(at, 0).0,
            unix(2024, 3, 10, 23, 0, 0) - 1
        );
        // Monday 2024-01-01 03:00 UTC at UTC-8 is Sunday 2023-12-31 19:00: the week
        // began Monday 2023-12-25 00:00 local = 08:00 UTC.
        let new_year = unix(2024, 1, 1, 3, 0, 0);
        assert_eq!(
            calendar_window(Calendar::Week, -480)
                .count_range(new_year, 0)
                .0,
            unix(2023, 12, 25, 8, 0, 0) - 1
        );
    }

    #[test]
    fn month_window_handles_month_ends_leap_years_and_year_boundaries() {
        let month = calendar_window(Calendar::Month, 0);
        assert_eq!(
            month.count_range(unix(2024, 2, 29, 23, 59, 59), 0).0,
            unix(2024, 2, 1, 0, 0, 0) - 1
        );
        assert_eq!(
            month.count_range(unix(2024, 3, 1, 0, 0, 0), 0).0,
            unix(2024, 3, 1, 0, 0, 0) - 1
        );
        assert_eq!(
            month.count_range(unix(2023, 12, 31, 12, 0, 0), 0).0,
            unix(2023, 12, 1, 0, 0, 0) - 1
        );
        // 2024-01-01 02:00 UTC at UTC-3 is still December 31 locally.
        let brazil = calendar_window(Calendar::Month, -180);
        assert_eq!(
            brazil.count_range(unix(2024, 1, 1, 2, 0, 0), 0).0,
            unix(2023, 12, 1, 3, 0, 0) - 1
        );
        // 2024-02-29 22:00 UTC at UTC+14 is already March 1 locally.
        let kiribati = calendar_window(Calendar::Month, 14 * 60);
        assert_eq!(
            kiribati.count_range(unix(2024, 2, 29, 22, 0, 0), 0).0,
            unix(2024, 2, 29, 10, 0, 0) - 1
        );
        // Before the epoch.
        assert_eq!(
            month.count_range(unix(1969, 7, 20, 20, 17, 0), 0).0,
            unix(1969, 7, 1, 0, 0, 0) - 1
        );
    }

    #[test]
    fn calendar_periods_contain_the_instant_for_many_instants() {
        for calendar in [Calendar::Day, Calendar::Week, Calendar::Month] {
            for offset in [-720, -570, -300, 0, 60, 345, 840] {
                let window = calendar_window(calendar, offset);
                let mut at = unix(1999, 12, 25, 0, 0, 0);
                while at < unix(2001, 1, 10, 0, 0, 0) {
                    let (after, until) = window.count_range(at, 0);
                    assert!(after < at && until == at, "{calendar:?} {offset} {at}");
                    let local_start = after + 1 + i64::from(offset) * 60;
                    assert_eq!(local_start.rem_euclid(SECONDS_PER_DAY), 0);
                    let (_, _, day) = civil_from_days(local_start.div_euclid(SECONDS_PER_DAY));
                    match calendar {
                        Calendar::Day => assert!(at - after <= SECONDS_PER_DAY),
                        Calendar::Week => {
                            assert_eq!(weekday_from_monday(local_start / SECONDS_PER_DAY), 0);
                            assert!(at - after <= 7 * SECONDS_PER_DAY);
                        }
                        Calendar::Month => {
                            assert_eq!(day, 1);
                            assert!(at - after <= 31 * SECONDS_PER_DAY);
                        }
                        Calendar::Rolling => unreachable!(),
                    }
                    at += 7_777;
                }
            }
        }
    }

    #[test]
    fn extreme_instants_do_not_overflow() {
        for calendar in [
            Calendar::Rolling,
            Calendar::Day,
            Calendar::Week,
            Calendar::Month,
        ] {
            for offset in [i32::MIN, -840, 0, 840, i32::MAX] {
                let window = CapWindow {
                    window_seconds: u32::MAX,
                    calendar,
                    utc_offset_minutes: offset,
                };
                for at in [i64::MIN, i64::MIN / 2, 0, i64::MAX / 2, i64::MAX] {
                    let _ = window.count_range(at, i64::MAX);
                }
            }
        }
    }
}
