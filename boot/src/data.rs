//! The data partition's contract between `/init` and the host side: the
//! factory-reset request `pak system factory-reset` leaves on it, and the
//! record of the check `/init` ran on it this boot, which `pak system
//! status` reads.

/// A factory-reset request lives in the first sector of the data
/// partition. ext4 never uses its first 1024 bytes (they are kept for a
/// boot loader) and mke2fs clears them, so the request cannot be mistaken
/// for filesystem data, survives until the format that fulfils it, and is
/// erased by it. A disk image and a live disk reach it with a plain write at
/// a known offset; no filesystem needs to be mounted or understood.
pub mod reset {
    /// Bytes at the start of the data partition that hold the request.
    pub const AREA: usize = 512;
    const MAGIC: &[u8] = b"pak factory-reset request v1\n";
    const NOTE: &[u8] = b"The next boot of this pak disk formats this partition (/var, /home, the changes to /etc) and provisions the machine again.\n";

    /// The sector that asks the next boot to wipe the data partition.
    pub fn request() -> [u8; AREA] {
        let mut s = [0u8; AREA];
        s[..MAGIC.len()].copy_from_slice(MAGIC);
        s[MAGIC.len()..MAGIC.len() + NOTE.len()].copy_from_slice(NOTE);
        s
    }

    /// Whether `area` (the partition's first bytes) holds a request.
    pub fn is_requested(area: &[u8]) -> bool {
        area.starts_with(MAGIC)
    }
}

/// Under `/var`: what `/init` found when it checked the data partition this
/// boot. It lives on whatever `/var` is, the data partition or the tmpfs
/// standing in for a damaged one, because `/run` is mounted over by the
/// system's own init. It names the boot it was written in, so a record an
/// earlier boot left (say, before a rollback to a pak that writes none) is
/// never taken for this boot's.
pub const CHECK_RECORD: &str = "lib/pak/data-check";

/// Under `/var`, in a boot whose data partition could not be repaired:
/// where the damaged filesystem is mounted read-only.
pub const DAMAGED_MOUNT: &str = "lib/pak/data-ro";

/// What the boot-time check of the data partition concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// e2fsck found nothing to do.
    Clean,
    /// e2fsck corrected errors; `/var` is the repaired filesystem.
    Corrected,
    /// The partition was blank and was formatted (first boot).
    Formatted,
    /// A factory reset was requested; the partition was formatted anew.
    Reset,
    /// The image has no e2fsck; `/var` is mounted unchecked.
    Unchecked,
    /// e2fsck could not repair it (or it could not be mounted): `/var` is
    /// a tmpfs for this boot and nothing written there lasts.
    Uncorrectable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Corrected => "corrected",
            Outcome::Formatted => "formatted",
            Outcome::Reset => "reset",
            Outcome::Unchecked => "unchecked",
            Outcome::Uncorrectable => "uncorrectable",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [
            Outcome::Clean,
            Outcome::Corrected,
            Outcome::Formatted,
            Outcome::Reset,
            Outcome::Unchecked,
            Outcome::Uncorrectable,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// One boot's check of the data partition, as [`CHECK_RECORD`] holds it:
/// `key=value` lines, `output=` repeated once per line e2fsck printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    /// `/proc/sys/kernel/random/boot_id` of the boot that wrote it.
    pub boot_id: String,
    /// The data partition's device node.
    pub device: String,
    pub outcome: Outcome,
    /// e2fsck's exit status, when it ran and exited.
    pub e2fsck_exit: Option<i32>,
    /// A journal was added to a filesystem an older pak made without one.
    pub journal_added: bool,
    /// [`Outcome::Uncorrectable`]: `/var/...` where the damaged filesystem
    /// is mounted read-only, if it could be.
    pub damaged_mount: Option<String>,
    /// What e2fsck (or the mount) said, line by line.
    pub output: Vec<String>,
}

impl CheckRecord {
    pub fn render(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        let mut out = format!(
            "boot_id={}\ndevice={}\noutcome={}\n",
            one_line(&self.boot_id),
            one_line(&self.device),
            self.outcome.as_str()
        );
        if let Some(c) = self.e2fsck_exit {
            out.push_str(&format!("e2fsck_exit={c}\n"));
        }
        if self.journal_added {
            out.push_str("journal_added=yes\n");
        }
        if let Some(m) = &self.damaged_mount {
            out.push_str(&format!("damaged_mount={}\n", one_line(m)));
        }
        for l in &self.output {
            out.push_str(&format!("output={}\n", one_line(l)));
        }
        out
    }

    /// `None` when `text` is not a record (no boot, device or outcome).
    pub fn parse(text: &str) -> Option<CheckRecord> {
        let (mut boot_id, mut device, mut outcome) = (None, None, None);
        let mut r = CheckRecord {
            boot_id: String::new(),
            device: String::new(),
            outcome: Outcome::Clean,
            e2fsck_exit: None,
            journal_added: false,
            damaged_mount: None,
            output: Vec::new(),
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "boot_id" => boot_id = Some(v.to_string()),
                "device" => device = Some(v.to_string()),
                "outcome" => outcome = Outcome::parse(v),
                "e2fsck_exit" => r.e2fsck_exit = v.parse().ok(),
                "journal_added" => r.journal_added = v == "yes",
                "damaged_mount" => r.damaged_mount = Some(v.to_string()),
                "output" => r.output.push(v.to_string()),
                // Keys a newer pak adds are skipped, not fatal.
                _ => {}
            }
        }
        r.boot_id = boot_id?;
        r.device = device?;
        r.outcome = outcome?;
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_recognised_and_a_blank_or_ext4_start_is_not() {
        let r = reset::request();
        assert!(reset::is_requested(&r));
        assert!(!reset::is_requested(&[0u8; reset::AREA]));
        // What mke2fs leaves there: zeros.
        let mut formatted = vec![0u8; 2048];
        formatted[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        assert!(!reset::is_requested(&formatted));
    }

    #[test]
    fn records_round_trip_and_junk_is_none() {
        let r = CheckRecord {
            boot_id: "3f1c".into(),
            device: "/dev/vda4".into(),
            outcome: Outcome::Uncorrectable,
            e2fsck_exit: Some(8),
            journal_added: false,
            damaged_mount: None,
            output: vec![
                "e2fsck: Bad magic number in super-block".into(),
                "two\nlines".into(),
            ],
        };
        let back = CheckRecord::parse(&r.render()).unwrap();
        assert_eq!(back.output[1], "two lines");
        assert_eq!(
            CheckRecord {
                output: back.output.clone(),
                ..r.clone()
            },
            back
        );
        let with_more = format!("{}future_key=1\n", r.render());
        assert!(CheckRecord::parse(&with_more).is_some());
        assert_eq!(CheckRecord::parse(""), None);
        assert_eq!(
            CheckRecord::parse("boot_id=1\ndevice=x\noutcome=odd\n"),
            None
        );
        for o in ["clean", "corrected", "formatted", "reset", "unchecked"] {
            assert_eq!(Outcome::parse(o).unwrap().as_str(), o);
        }
    }
}
