//! Scheduled backups: when the next one is due and which archives retention removes. Pure:
//! times are Unix seconds (UTC) and directory listings are names, so the rules are tested
//! without clocks or disks; the caller takes the archive and deletes files.
//!
//! ```text
//!  schedule "00:00,12:00"  ─▶ the first of those UTC times strictly after now (k3s's default)
//!  schedule "every 6h"     ─▶ last + 6h, or now when that is past (a node that was down
//!                             backs up as soon as it is back), or now + 6h with no last one
//!  schedule "off"          ─▶ never
//!  retention N             ─▶ of the archives named <PREFIX>-<node>-<YYYYMMDDTHHMMSSZ>.tar.gz,
//!                             keep the N newest; anything else in the directory is not ours
//! ```

use std::fmt;
use std::str::FromStr;

/// What a scheduled archive's name starts with; `k8sd backup`'s default names start with
/// `k8sd-backup`, so an operator's own archive beside them is never counted or removed.
pub const SCHEDULED_PREFIX: &str = "k8sd-scheduled-backup";
/// k3s's default: twice a day, at midnight and noon UTC.
pub const DEFAULT_SCHEDULE: &str = "00:00,12:00";
/// k3s's default retention.
pub const DEFAULT_KEEP: u32 = 5;

const DAY: i64 = 86_400;

/// When scheduled backups run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Off,
    /// Every this many seconds after the last one.
    Every(u64),
    /// At these minutes of the UTC day, sorted and without repeats.
    Daily(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "backup schedule {value:?}: {reason}. Write `off`, `every N` with N in s, m or h (`every 6h`), or UTC \
     times HH:MM separated by commas (`00:00,12:00`)"
)]
pub struct ScheduleError {
    pub value: String,
    pub reason: String,
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Schedule, ScheduleError> {
        let bad = |reason: &str| ScheduleError {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if t == "off" {
            return Ok(Schedule::Off);
        }
        if let Some(every) = t.strip_prefix("every ") {
            let every = every.trim();
            let unit = match every.chars().last() {
                Some('s') => 1,
                Some('m') => 60,
                Some('h') => 3600,
                _ => return Err(bad("the interval needs a unit, s, m or h")),
            };
            let n: u64 = every[..every.len() - 1]
                .parse()
                .map_err(|_| bad("the interval is not a whole number"))?;
            if n == 0 {
                return Err(bad("the interval must be more than 0"));
            }
            return n
                .checked_mul(unit)
                .map(Schedule::Every)
                .ok_or_else(|| bad("the interval is too long"));
        }
        let mut minutes = Vec::new();
        for part in t.split(',') {
            let part = part.trim();
            let (h, m) = part.split_once(':').ok_or_else(|| bad("a time is not HH:MM"))?;
            let ok = |x: &str, max: u32| {
                (x.len() == 2)
                    .then(|| x.parse::<u32>().ok())
                    .flatten()
                    .filter(|v| *v <= max)
            };
            match (ok(h, 23), ok(m, 59)) {
                (Some(h), Some(m)) => minutes.push(h * 60 + m),
                _ => return Err(bad("a time is not HH:MM between 00:00 and 23:59")),
            }
        }
        minutes.sort_unstable();
        minutes.dedup();
        Ok(Schedule::Daily(minutes))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Off => write!(f, "off"),
            Schedule::Every(secs) if secs % 3600 == 0 => write!(f, "every {}h", secs / 3600),
            Schedule::Every(secs) if secs % 60 == 0 => write!(f, "every {}m", secs / 60),
            Schedule::Every(secs) => write!(f, "every {secs}s"),
            Schedule::Daily(minutes) => {
                let times: Vec<String> = minutes
                    .iter()
                    .map(|m| format!("{:02}:{:02}", m / 60, m % 60))
                    .collect();
                write!(f, "{}", times.join(","))
            }
        }
    }
}

impl Schedule {
    /// When the next scheduled backup is due, given the last one's time (`None`: none yet, as
    /// far as this process knows) and now; `None` when backups are off.
    pub fn next_run(&self, last: Option<i64>, now: i64) -> Option<i64> {
        match self {
            Schedule::Off => None,
            Schedule::Every(secs) => {
                let secs = i64::try_from(*secs).unwrap_or(i64::MAX);
                Some(match last {
                    Some(l) => l.saturating_add(secs).max(now),
                    None => now.saturating_add(secs),
                })
            }
            Schedule::Daily(minutes) => {
                let day_start = now.div_euclid(DAY) * DAY;
                // Today's times after now, else the first time tomorrow. Strictly after: a
                // backup taken at 12:00:00 must not be due again at once.
                [day_start, day_start + DAY]
                    .iter()
                    .find_map(|d| minutes.iter().map(|m| d + i64::from(*m) * 60).find(|t| *t > now))
            }
        }
    }
}

/// The archive name for a scheduled backup of `node` taken at `stamp`
/// (`YYYYMMDDTHHMMSSZ`, as `k8sd backup` names its own).
pub fn archive_name(node: &str, stamp: &str) -> String {
    format!("{SCHEDULED_PREFIX}-{node}-{stamp}.tar.gz")
}

/// The UTC time stamp in a scheduled archive's name, or `None` for any other file (an
/// operator's archive, a `.part` being written, a scratch directory).
fn stamp_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(SCHEDULED_PREFIX)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".tar.gz")?;
    let (node, stamp) = rest.rsplit_once('-')?;
    let b = stamp.as_bytes();
    let shape = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    (!node.is_empty() && shape).then_some(stamp)
}

/// Of `names` (a directory listing), the scheduled archives retention removes: all but the
/// `keep` newest by the time in their names. Other files are never named.
pub fn to_remove<'a>(names: impl IntoIterator<Item = &'a str>, keep: u32) -> Vec<&'a str> {
    let mut ours: Vec<(&str, &str)> = names
        .into_iter()
        .filter_map(|n| stamp_of(n).map(|s| (s, n)))
        .collect();
    // Newest first; the stamp's fixed width makes text order time order.
    ours.sort_unstable_by(|a, b| b.cmp(a));
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    ours.into_iter().skip(keep).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06T00:00:00Z.
    const DAY0: i64 = 1_796_515_200;

    fn at(h: i64, m: i64, s: i64) -> i64 {
        DAY0 + h * 3600 + m * 60 + s
    }

    #[test]
    fn schedules_parse_and_print_back() {
        for (text, want) in [
            ("off", Schedule::Off),
            ("every 30s", Schedule::Every(30)),
            ("every 15m", Schedule::Every(900)),
            (" every 6h ", Schedule::Every(6 * 3600)),
            ("00:00,12:00", Schedule::Daily(vec![0, 720])),
            ("12:00, 00:00,12:00", Schedule::Daily(vec![0, 720])),
            ("23:59", Schedule::Daily(vec![1439])),
        ] {
            let got: Schedule = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<Schedule>().unwrap(), want, "{text}");
        }
        assert_eq!(
            DEFAULT_SCHEDULE.parse::<Schedule>().unwrap().to_string(),
            "00:00,12:00"
        );
        assert_eq!(Schedule::Every(90).to_string(), "every 90s");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong_and_what_to_write() {
        for (text, reason) in [
            ("", "not HH:MM"),
            ("daily", "not HH:MM"),
            ("every 6", "needs a unit"),
            ("every 0s", "more than 0"),
            ("every -1h", "whole number"),
            ("every 1.5h", "whole number"),
            ("24:00", "between 00:00 and 23:59"),
            ("12:60", "between 00:00 and 23:59"),
            ("1:00", "between 00:00 and 23:59"),
            ("00:00,", "not HH:MM"),
        ] {
            let e = text.parse::<Schedule>().unwrap_err();
            assert_eq!(e.value, text);
            let msg = e.to_string();
            assert!(msg.contains(reason), "{text}: {msg}");
            assert!(
                msg.contains("`every 6h`") && msg.contains("`00:00,12:00`"),
                "{msg}"
            );
        }
    }

    #[test]
    fn daily_times_are_the_next_one_strictly_after_now_in_utc() {
        let s = Schedule::Daily(vec![0, 720]);
        assert_eq!(
            s.next_run(None, at(0, 0, 0)),
            Some(at(12, 0, 0)),
            "not again at once"
        );
        assert_eq!(s.next_run(None, at(11, 59, 59)), Some(at(12, 0, 0)));
        assert_eq!(s.next_run(Some(at(12, 0, 0)), at(12, 0, 1)), Some(at(24, 0, 0)));
        // The last backup does not matter for fixed times: a node down at noon waits for
        // midnight, as k3s's cron does.
        assert_eq!(s.next_run(Some(DAY0 - DAY), at(13, 0, 0)), Some(at(24, 0, 0)));
        assert_eq!(
            Schedule::Daily(vec![1439]).next_run(None, at(23, 59, 0)),
            Some(at(47, 59, 0))
        );
    }

    #[test]
    fn intervals_count_from_the_last_backup_and_catch_up_at_once() {
        let s = Schedule::Every(3600);
        assert_eq!(
            s.next_run(None, at(5, 0, 0)),
            Some(at(6, 0, 0)),
            "none yet: one interval"
        );
        assert_eq!(s.next_run(Some(at(5, 30, 0)), at(5, 40, 0)), Some(at(6, 30, 0)));
        assert_eq!(
            s.next_run(Some(at(1, 0, 0)), at(5, 0, 0)),
            Some(at(5, 0, 0)),
            "overdue: now"
        );
        assert_eq!(Schedule::Off.next_run(Some(at(1, 0, 0)), at(5, 0, 0)), None);
        assert_eq!(
            Schedule::Every(u64::MAX).next_run(None, at(0, 0, 0)),
            Some(i64::MAX)
        );
    }

    #[test]
    fn retention_keeps_the_newest_scheduled_archives_and_nothing_else_is_touched() {
        let names = [
            archive_name("n-1", "20261206T120000Z"),
            archive_name("n-1", "20261205T000000Z"),
            archive_name("n-1", "20261206T000000Z"),
            archive_name("n-1", "20261205T120000Z"),
            // Not ours: a manual backup, an archive being written, a scratch dir, a bad stamp.
            "k8sd-backup-n-1-20261201T000000Z.tar.gz".to_string(),
            format!("{}.part", archive_name("n-1", "20261207T000000Z")),
            ".k8sd-backup-42".to_string(),
            archive_name("n-1", "2026120T000000Z"),
            format!("{SCHEDULED_PREFIX}--20261201T000000Z.tar.gz"),
        ];
        let refs = names.iter().map(String::as_str);
        assert_eq!(
            to_remove(refs.clone(), 2),
            [
                "k8sd-scheduled-backup-n-1-20261205T120000Z.tar.gz",
                "k8sd-scheduled-backup-n-1-20261205T000000Z.tar.gz"
            ]
        );
        assert!(to_remove(refs.clone(), 4).is_empty());
        assert_eq!(to_remove(refs, 1).len(), 3);
    }
}
