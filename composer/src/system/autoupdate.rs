//! Automatic updates: what `pak system update --watch` does between checks.
//!
//! An image whose Pakfile has `[update]` runs the updater as a service: it
//! checks the channel every `interval`, installs what it is offered through
//! the same code as `pak system update`, and reboots into it inside the
//! `reboot-window`. The boot that follows is on trial like any switch: its
//! health checks mark it good, or the machine falls back by itself and the
//! updater does not try that generation again.
//!
//! The window is in UTC: a fleet spread over time zones then reboots at one
//! time the operator can name, and the machine needs no time zone data.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

/// Minutes of the UTC day, `start` inclusive, `end` exclusive; a window
/// whose end comes before its start runs over midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

const DAY: u64 = 24 * 60 * 60;

impl FromStr for Window {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Window> {
        let bad = || {
            anyhow::anyhow!(
                "reboot-window = {s:?} is not a window of the day: write HH:MM-HH:MM in UTC, like \"02:00-04:00\""
            )
        };
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            bail!("reboot-window = {s:?} is empty: its start and end are the same minute");
        }
        Ok(Window { start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{} UTC", hm(self.start), hm(self.end))
    }
}

impl Window {
    /// Seconds from `now` (Unix time) until the window opens; 0 inside it.
    pub fn wait(&self, now: u64) -> u64 {
        let second_of_day = now % DAY;
        let minute = (second_of_day / 60) as u32;
        let inside = if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        };
        if inside {
            return 0;
        }
        let start = u64::from(self.start) * 60;
        (start + DAY - second_of_day) % DAY
    }
}

/// When the updater checks and when it may reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Seconds between checks.
    pub interval: u64,
    /// `None`: reboot as soon as an update is written.
    pub window: Option<Window>,
}

/// Checks once an hour unless the configuration says otherwise.
pub const DEFAULT_INTERVAL: &str = "1h";

impl Schedule {
    pub fn parse(interval: Option<&str>, window: Option<&str>) -> Result<Schedule> {
        let text = interval.unwrap_or(DEFAULT_INTERVAL);
        let interval = crate::channel::parse_duration(text)
            .map_err(|e| anyhow::anyhow!("interval = {text:?}: {e}"))?;
        if interval == 0 {
            bail!("interval = {text:?}: an update check needs a pause between runs (like \"1h\")");
        }
        Ok(Schedule {
            interval,
            window: window.map(str::parse).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3600;

    #[test]
    fn windows_parse_and_say_what_is_wrong() {
        let w: Window = "02:00-04:30".parse().unwrap();
        assert_eq!(w.to_string(), "02:00-04:30 UTC");
        for bad in [
            "2-4",
            "02:00",
            "25:00-01:00",
            "02:60-03:00",
            "02:00-02:00",
            "2:00-04:00",
        ] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains("reboot-window"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_wait_reaches_the_next_opening() {
        let day = 20_000 * DAY;
        let w: Window = "02:00-04:00".parse().unwrap();
        assert_eq!(w.wait(day + 3 * H), 0);
        assert_eq!(w.wait(day + 2 * H), 0);
        assert_eq!(w.wait(day + 4 * H), 22 * H, "the end is exclusive");
        assert_eq!(w.wait(day + H + 1800), 1800);
        assert_eq!(w.wait(day + 23 * H), 3 * H);
        let over_midnight: Window = "23:00-01:00".parse().unwrap();
        assert_eq!(over_midnight.wait(day + 23 * H + 60), 0);
        assert_eq!(over_midnight.wait(day + 30 * 60), 0);
        assert_eq!(over_midnight.wait(day + H), 22 * H);
    }

    #[test]
    fn schedules_default_to_an_hour_and_refuse_nonsense() {
        let s = Schedule::parse(None, None).unwrap();
        assert_eq!((s.interval, s.window), (H, None));
        assert_eq!(Schedule::parse(Some("10s"), None).unwrap().interval, 10);
        assert!(Schedule::parse(Some("0s"), None).is_err());
        assert!(Schedule::parse(Some("soon"), None).is_err());
        assert!(Schedule::parse(None, Some("noon")).is_err());
    }
}
