//! `[update]`: where a machine takes its updates from, and when.
//!
//! ```toml
//! [update]
//! channel = "https://updates.example.com/minimal"
//! key = "keys/channel.pub"      # a .pub file (relative to the Pakfile) or the key text
//! interval = "1h"
//! reboot-window = "02:00-04:00" # UTC; absent: reboot as soon as an update is written
//! ```
//!
//! The image carries it as `/etc/pak/update.toml` (the key inlined) and
//! runs `pak system update --watch` as a service. Everything is checked
//! when the Pakfile is read, so a typo fails the build, not the fleet.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The service `[update]` adds to the Pakfile's `[services]`, and what it runs.
pub const SERVICE: &str = "pak-update";
pub const EXEC: &str = "/usr/bin/pak system update --watch";
/// Where the image carries `[update]`; `pak system update` reads it.
pub const CONFIG_FILE: &str = "/etc/pak/update.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Update {
    /// The channel: `http(s)://` (or `file://`, or a directory on the machine).
    pub channel: String,
    /// The channel's public key: a `.pub` file relative to the Pakfile, or its text.
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_window: Option<String>,
}

impl Update {
    pub fn validate(&self) -> Result<()> {
        if self.channel.trim().is_empty() || self.channel.contains(char::is_whitespace) {
            bail!(
                "[update] channel = {:?} is not a URL: give the channel's http(s):// address",
                self.channel
            );
        }
        Schedule::parse(self.interval.as_deref(), self.reboot_window.as_deref())
            .context("[update]")?;
        Ok(())
    }

    /// `/etc/pak/update.toml` as the image carries it: the key's text
    /// inlined, so the file is whole wherever the image runs.
    pub fn config_file(&self, pakfile_dir: &std::path::Path) -> Result<String> {
        let key = crate::sources::key::PublicKey::from_pakfile_field(&self.key, pakfile_dir)
            .context("[update] key")?;
        let inlined = Update {
            key: key.to_text(),
            ..self.clone()
        };
        Ok(format!(
            "# Written by pak from the Pakfile's [update]; read by `pak system update`.\n{}",
            toml::to_string(&inlined).expect("[update] serialises")
        ))
    }
}

/// Minutes of the UTC day, `start` inclusive, `end` exclusive; a window
/// whose end comes before its start runs over midnight. UTC, so a fleet
/// spread over time zones reboots at one time the operator can name, and
/// the machine needs no time zone data.
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
        let Some(interval) = crate::util::timefmt::parse_duration(text) else {
            bail!(
                "interval = {text:?} is not a duration: write a number and s, m, h, d or w, like \"1h\""
            );
        };
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

    fn parse(text: &str) -> Update {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn checked_and_carried_with_its_key_inlined() {
        let dir = tempfile::tempdir().unwrap();
        let public = crate::sources::key::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        std::fs::write(dir.path().join("channel.pub"), &public).unwrap();
        let u = parse(
            "channel = \"http://10.0.2.2:8080/minimal\"\nkey = \"channel.pub\"\ninterval = \"10s\"\nreboot-window = \"02:00-04:00\"\n",
        );
        u.validate().unwrap();
        let file = u.config_file(dir.path()).unwrap();
        let back: crate::system::update::UpdateConfig =
            crate::system::update::UpdateConfig::parse(&file, "update.toml").unwrap();
        assert_eq!(back.channel, "http://10.0.2.2:8080/minimal");
        assert_eq!(back.key.trim(), public.trim());
        assert_eq!(back.interval.as_deref(), Some("10s"));
        assert_eq!(back.reboot_window.as_deref(), Some("02:00-04:00"));

        let e = format!(
            "{:#}",
            parse("channel = \"x\"\nkey = \"k\"\nreboot-window = \"2am\"\n")
                .validate()
                .unwrap_err()
        );
        assert!(e.contains("[update]") && e.contains("reboot-window"), "{e}");
        let e = format!(
            "{:#}",
            parse("channel = \"a b\"\nkey = \"k\"\n")
                .validate()
                .unwrap_err()
        );
        assert!(e.contains("not a URL"), "{e}");
    }
}
