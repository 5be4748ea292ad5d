//! Arming schedules: weekly windows such as `Mon-Fri 19:00-07:30` in the site's IANA time zone,
//! plus dated exceptions (holidays). Pure: no clock is read here.
//!
//! A window belongs to the day it starts on; one whose end is not after its start runs past
//! midnight into the next day (`Fri 19:00-07:30` ends Saturday 07:30). Times are civil times in
//! the site's zone, so a night window covers the same wall-clock hours across DST changes (a civil
//! time that does not exist, in the spring gap, means the moment after the gap). On a date with an
//! exception, the exception's windows replace the windows starting that day (an empty list: not
//! armed that day); a window from the day before still runs out.

use std::collections::BTreeMap;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// One weekly window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday = 0 … Sunday = 6: the days the window starts on.
    days: [bool; 7],
    /// Minutes after midnight, 0..1440.
    start: u16,
    /// Minutes after midnight, 0..=1440; not after `start` means "the next day".
    end: u16,
}

/// When a rule is armed.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: TimeZone,
    windows: Vec<Window>,
    /// Per date: the windows starting that date instead of the weekly ones.
    exceptions: BTreeMap<Date, Vec<Window>>,
}

const DAYS: [(&str, usize); 7] = [
    ("mon", 0),
    ("tue", 1),
    ("wed", 2),
    ("thu", 3),
    ("fri", 4),
    ("sat", 5),
    ("sun", 6),
];

fn day_index(name: &str) -> Option<usize> {
    let n = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .find(|(d, _)| n.starts_with(d) && n.len() >= 3)
        .map(|(_, i)| *i)
}

fn weekday_index(w: Weekday) -> usize {
    w.to_monday_zero_offset() as usize
}

/// What is wrong with a schedule entry; each names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0:?} is not a time; use HH:MM")]
    NotATime(String),
    #[error("{0:?} is not a time of day (00:00-24:00)")]
    NotATimeOfDay(String),
    #[error("unknown day {day:?} in {window:?}; use Mon..Sun")]
    UnknownDay { day: String, window: String },
    #[error("{0:?}: expected a time range like 19:00-07:30")]
    NotARange(String),
    #[error("{0:?}: a window cannot start at 24:00")]
    StartsAtMidnightEnd(String),
    #[error("{0:?}: empty window; for a whole day write 00:00-24:00")]
    EmptyWindow(String),
    #[error("{0:?} is not a date; use YYYY-MM-DD")]
    NotADate(String),
    #[error("{0}: listed twice")]
    DateTwice(String),
}

fn parse_time(s: &str) -> Result<u16, ScheduleError> {
    let not_a_time = || ScheduleError::NotATime(s.to_owned());
    let (h, m) = s.trim().split_once(':').ok_or_else(not_a_time)?;
    let (h, m): (u16, u16) = (
        h.parse().map_err(|_| not_a_time())?,
        m.parse().map_err(|_| not_a_time())?,
    );
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(ScheduleError::NotATimeOfDay(s.to_owned()));
    }
    Ok(h * 60 + m)
}

impl Window {
    /// Parses `"Mon-Fri 19:00-07:30"`, `"Sat,Sun 00:00-24:00"`, `"daily 08:00-17:00"` or just
    /// `"08:00-17:00"` (every day).
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let s = s.trim();
        let unknown = |day: &str| ScheduleError::UnknownDay {
            day: day.to_owned(),
            window: s.to_owned(),
        };
        let (days_part, times) = match s.rsplit_once(' ') {
            Some((d, t)) => (Some(d.trim()), t),
            None => (None, s),
        };
        let mut days = [false; 7];
        match days_part {
            None => days = [true; 7],
            Some(d) if d.eq_ignore_ascii_case("daily") || d == "*" => days = [true; 7],
            Some(d) => {
                for part in d.split(',') {
                    match part.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (
                                day_index(a).ok_or_else(|| unknown(a))?,
                                day_index(b).ok_or_else(|| unknown(b))?,
                            );
                            // Ranges may wrap: Sat-Mon.
                            let mut i = a;
                            loop {
                                days[i] = true;
                                if i == b {
                                    break;
                                }
                                i = (i + 1) % 7;
                            }
                        }
                        None => days[day_index(part).ok_or_else(|| unknown(part))?] = true,
                    }
                }
            }
        }
        let (a, b) = times
            .split_once('-')
            .ok_or_else(|| ScheduleError::NotARange(s.to_owned()))?;
        let (start, end) = (parse_time(a)?, parse_time(b)?);
        if start == 1440 {
            return Err(ScheduleError::StartsAtMidnightEnd(s.to_owned()));
        }
        if start == end {
            return Err(ScheduleError::EmptyWindow(s.to_owned()));
        }
        Ok(Self { days, start, end })
    }

    /// The window's span for a start date, as instants in `tz`.
    fn span(&self, day: Date, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        let at = |date: Date, minutes: u16| -> Option<Timestamp> {
            let (date, minutes) = if minutes == 1440 {
                (date.tomorrow().ok()?, 0)
            } else {
                (date, minutes)
            };
            let civil = date.at((minutes / 60) as i8, (minutes % 60) as i8, 0, 0);
            Some(civil.to_zoned(tz.clone()).ok()?.timestamp())
        };
        let start = at(day, self.start)?;
        let end = if self.end > self.start {
            at(day, self.end)?
        } else {
            at(day.tomorrow().ok()?, self.end)?
        };
        Some((start, end))
    }
}

impl Schedule {
    /// Armed all the time.
    pub fn always(tz: TimeZone) -> Self {
        Self {
            tz,
            windows: vec![Window {
                days: [true; 7],
                start: 0,
                end: 1440,
            }],
            exceptions: BTreeMap::new(),
        }
    }

    /// `windows`: weekly windows; `exceptions`: (date "YYYY-MM-DD", windows of that date, each
    /// "HH:MM-HH:MM"). Errors name the offending entry.
    pub fn new(
        tz: TimeZone,
        windows: &[String],
        exceptions: &[(String, Vec<String>)],
    ) -> Result<Self, ScheduleError> {
        let windows = windows
            .iter()
            .map(|w| Window::parse(w))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ex = BTreeMap::new();
        for (date, ws) in exceptions {
            let d: Date = date
                .parse()
                .map_err(|_| ScheduleError::NotADate(date.clone()))?;
            let ws = ws
                .iter()
                .map(|w| {
                    let w = Window::parse(w)?;
                    Ok(Window {
                        days: [true; 7],
                        ..w
                    })
                })
                .collect::<Result<Vec<_>, ScheduleError>>()?;
            if ex.insert(d, ws).is_some() {
                return Err(ScheduleError::DateTwice(date.clone()));
            }
        }
        Ok(Self {
            tz,
            windows,
            exceptions: ex,
        })
    }

    fn windows_starting(&self, day: Date) -> impl Iterator<Item = &Window> {
        let weekday = weekday_index(day.weekday());
        match self.exceptions.get(&day) {
            Some(ws) => ws.iter().collect::<Vec<_>>().into_iter(),
            None => self
                .windows
                .iter()
                .filter(|w| w.days[weekday])
                .collect::<Vec<_>>()
                .into_iter(),
        }
    }

    /// Is the schedule active at `t`?
    pub fn is_active(&self, t: Timestamp) -> bool {
        let today = t.to_zoned(self.tz.clone()).date();
        // A window can start at most a day (plus a DST hour) before `t`.
        let Ok(yesterday) = today.checked_sub(1.day()) else {
            return false;
        };
        [yesterday, today].into_iter().any(|day| {
            self.windows_starting(day)
                .filter_map(|w| w.span(day, &self.tz))
                .any(|(start, end)| start <= t && t < end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn at(tz: &TimeZone, s: &str) -> Timestamp {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp()
    }

    fn sched(tz: TimeZone, w: &[&str]) -> Schedule {
        Schedule::new(
            tz,
            &w.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn parses_and_refuses() {
        assert!(Window::parse("Mon-Fri 19:00-07:30").is_ok());
        assert!(Window::parse("Sat,Sun 00:00-24:00").is_ok());
        assert!(
            Window::parse("Sat-Mon 22:00-06:00").unwrap().days
                == [true, false, false, false, false, true, true]
        );
        assert!(Window::parse("08:00-17:00").unwrap().days == [true; 7]);
        for bad in [
            "Mon-Fry 19:00-07:00",
            "Mon 25:00-07:00",
            "Mon 19:00",
            "Mon 07:00-07:00",
            "Mon 24:00-01:00",
            "Mon 7-9",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        // The error says which part and names the entry.
        assert_eq!(
            Window::parse("Mon-Fry 19:00-07:00").unwrap_err(),
            ScheduleError::UnknownDay {
                day: "Fry".into(),
                window: "Mon-Fry 19:00-07:00".into()
            }
        );
        assert_eq!(
            Window::parse("Mon 07:00-07:00").unwrap_err().to_string(),
            "\"Mon 07:00-07:00\": empty window; for a whole day write 00:00-24:00"
        );
    }

    #[test]
    fn night_window_runs_past_midnight_into_the_next_day() {
        let tz = berlin();
        let s = sched(tz.clone(), &["Mon-Fri 19:00-07:30"]);
        // 2026-11-20 is a Friday.
        assert!(!s.is_active(at(&tz, "2026-11-20T18:59")));
        assert!(s.is_active(at(&tz, "2026-11-20T19:00")));
        assert!(
            s.is_active(at(&tz, "2026-11-21T07:29")),
            "Friday's window ends Saturday 07:30"
        );
        assert!(!s.is_active(at(&tz, "2026-11-21T07:30")));
        assert!(
            !s.is_active(at(&tz, "2026-11-21T20:00")),
            "no window starts on Saturday"
        );
        assert!(
            !s.is_active(at(&tz, "2026-11-23T06:00")),
            "Sunday started none either"
        );
        assert!(
            s.is_active(at(&tz, "2026-11-24T06:00")),
            "Monday's runs into Tuesday"
        );
    }

    #[test]
    fn exceptions_replace_the_days_windows() {
        let tz = berlin();
        let s = Schedule::new(
            tz.clone(),
            &["Mon-Fri 19:00-07:30".into()],
            &[
                ("2026-12-24".into(), vec!["14:00-09:00".into()]), // Thursday: from 14:00 into Friday
                ("2026-12-25".into(), vec![]),                     // Friday: no window starts
            ],
        )
        .unwrap();
        assert!(!s.is_active(at(&tz, "2026-12-24T12:00")));
        assert!(s.is_active(at(&tz, "2026-12-24T15:00")));
        assert!(
            s.is_active(at(&tz, "2026-12-25T05:00")),
            "the 24th's window runs out"
        );
        assert!(
            !s.is_active(at(&tz, "2026-12-25T20:00")),
            "no window starts on the 25th"
        );
        assert!(s.is_active(at(&tz, "2026-12-28T20:00")), "Monday again");
        assert!(Schedule::new(tz, &[], &[("2026-13-01".into(), vec![])]).is_err());
    }

    #[test]
    fn dst_nights_cover_the_same_wall_clock_hours() {
        let tz = berlin();
        let s = sched(tz.clone(), &["22:00-06:00"]);
        // Spring forward 2026-03-29 02:00 → 03:00: the night is 7 real hours.
        let (a, b) = (at(&tz, "2026-03-28T22:00"), at(&tz, "2026-03-29T06:00"));
        assert_eq!(b.duration_since(a).as_secs(), 7 * 3600);
        assert!(s.is_active(at(&tz, "2026-03-29T03:30")));
        assert!(!s.is_active(at(&tz, "2026-03-29T06:00")));
        // Fall back 2026-10-25 03:00 → 02:00: 9 real hours, all armed.
        let (a, b) = (at(&tz, "2026-10-24T22:00"), at(&tz, "2026-10-25T06:00"));
        assert_eq!(b.duration_since(a).as_secs(), 9 * 3600);
        for m in (0..9 * 60).step_by(7) {
            assert!(s.is_active(a + (m as i64).minutes()), "minute {m}");
        }
        assert!(!s.is_active(b));
    }

    proptest! {
        /// In any zone, at any instant, the schedule is active exactly when the wall-clock time
        /// there falls in a window (checked across Berlin's DST changes and midnights).
        #[test]
        fn active_iff_wall_clock_in_window(
            minutes in 0i64..(60 * 24 * 400),
            start_h in 0u16..24, start_m in (0u16..4).prop_map(|q| q * 15),
            len in 15u16..1425,
        ) {
            let tz = berlin();
            let start = start_h * 60 + start_m;
            let end = (start + len) % 1440;
            let end = if end == 0 { 1440 } else { end };
            let w = format!("{:02}:{:02}-{:02}:{:02}", start / 60, start % 60, end / 60, end % 60);
            let s = sched(tz.clone(), &[&w]);
            let t = at(&tz, "2026-01-01T00:00") + minutes.minutes();
            let local = t.to_zoned(tz.clone());
            let m = local.hour() as u16 * 60 + local.minute() as u16;
            let expected = if end > start { m >= start && m < end } else { m >= start || m < end };
            // Wall-clock minutes that do not exist (the spring gap) are shifted by the zone's rules;
            // skip the transition hours themselves, where "the wall clock" is ambiguous.
            let dst_hour = local.date() == "2026-03-29".parse::<Date>().unwrap() && (1..=3).contains(&local.hour())
                || local.date() == "2026-10-25".parse::<Date>().unwrap() && (1..=3).contains(&local.hour());
            if !dst_hour {
                prop_assert_eq!(s.is_active(t), expected, "{} at {}", w, local);
            }
        }

        /// Reordering the windows changes nothing.
        #[test]
        fn window_order_does_not_matter(minutes in 0i64..(60 * 24 * 14)) {
            let tz = berlin();
            let a = sched(tz.clone(), &["Mon-Fri 19:00-07:30", "Sat,Sun 00:00-24:00"]);
            let b = sched(tz.clone(), &["Sat,Sun 00:00-24:00", "Mon-Fri 19:00-07:30"]);
            let t = at(&tz, "2026-11-16T00:00") + minutes.minutes();
            prop_assert_eq!(a.is_active(t), b.is_active(t));
        }
    }
}
