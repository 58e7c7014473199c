//! What `/init` found when it checked the data partition this boot, for
//! `pak system status`. `/init` writes it to `/var/lib/pak/data-check` (see
//! [`pak_boot::data::CHECK_RECORD`]); a record left by another boot is
//! ignored.

use std::fmt;
use std::path::Path;

use pak_boot::data::{CHECK_RECORD, CheckRecord, Outcome};
use serde::{Serialize, Serializer};

/// The data partition's check at the start of this boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataCheck {
    /// The data partition's device node.
    pub device: String,
    #[serde(serialize_with = "outcome_name")]
    pub outcome: Outcome,
    /// e2fsck's exit status, when it ran.
    pub e2fsck_exit: Option<i32>,
    /// A journal was added this boot (an older pak made the filesystem
    /// without one).
    pub journal_added: bool,
    /// Where the damaged filesystem is mounted read-only, when `/var` is a
    /// tmpfs standing in for it.
    pub damaged_mount: Option<String>,
    /// What e2fsck (or the mount) said, line by line.
    pub output: Vec<String>,
}

fn outcome_name<S: Serializer>(o: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(o.as_str())
}

/// This boot's check of the data partition; `None` when there is no
/// record of this boot (as when not running on a pak system, or booted by
/// a pak that kept none) or it is unreadable.
pub fn read() -> Option<DataCheck> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    read_from(Path::new("/var"), boot_id.trim())
}

/// The record under `var` if it was written in boot `boot_id`.
pub fn read_from(var: &Path, boot_id: &str) -> Option<DataCheck> {
    let text = std::fs::read_to_string(var.join(CHECK_RECORD)).ok()?;
    let r = CheckRecord::parse(&text)?;
    if r.boot_id != boot_id {
        return None;
    }
    Some(DataCheck {
        device: r.device,
        outcome: r.outcome,
        e2fsck_exit: r.e2fsck_exit,
        journal_added: r.journal_added,
        damaged_mount: r.damaged_mount,
        output: r.output,
    })
}

impl DataCheck {
    /// Whether an operator must act: `/var` is a tmpfs this boot.
    pub fn needs_attention(&self) -> bool {
        self.outcome == Outcome::Uncorrectable
    }
}

/// One line for `pak system status`, after `data: `; for an uncorrectable
/// partition, more lines follow with e2fsck's words and the way to repair.
impl fmt::Display for DataCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.device;
        match self.outcome {
            Outcome::Clean => write!(f, "{d} checked at boot, clean")?,
            Outcome::Corrected => write!(
                f,
                "{d} had errors that e2fsck corrected at boot; /var is the repaired filesystem"
            )?,
            Outcome::Formatted => write!(f, "{d} was blank and formatted at boot (first boot)")?,
            Outcome::Reset => write!(
                f,
                "{d} was wiped at boot by a factory reset and provisioned again"
            )?,
            Outcome::Unchecked => write!(
                f,
                "{d} was not checked at boot: the image has no e2fsck (add e2fsprogs)"
            )?,
            Outcome::Uncorrectable => {
                write!(
                    f,
                    "{d} HAS ERRORS e2fsck could not repair{}; /var is a tmpfs this boot and nothing written there lasts",
                    self.e2fsck_exit
                        .map(|c| format!(" (exit {c})"))
                        .unwrap_or_default()
                )?;
                match &self.damaged_mount {
                    Some(m) => write!(f, "\n  its files are mounted read-only on {m}")?,
                    None => write!(f, "\n  it cannot be mounted, even read-only")?,
                }
                for l in &self.output {
                    write!(f, "\n  | {l}")?;
                }
                let umount = self
                    .damaged_mount
                    .as_ref()
                    .map(|m| format!("umount {m} && "))
                    .unwrap_or_default();
                write!(
                    f,
                    "\n  repair: {umount}e2fsck -f {d}, then reboot; or start over: pak system factory-reset"
                )?;
            }
        }
        if self.journal_added {
            write!(
                f,
                " (a journal was added; an older pak had formatted it without one)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(boot: &str, outcome: Outcome) -> CheckRecord {
        CheckRecord {
            boot_id: boot.into(),
            device: "/dev/vda4".into(),
            outcome,
            e2fsck_exit: Some(8),
            journal_added: false,
            damaged_mount: None,
            output: vec!["e2fsck: Bad magic number in super-block".into()],
        }
    }

    #[test]
    fn only_this_boots_record_counts() {
        let var = tempfile::tempdir().unwrap();
        assert_eq!(read_from(var.path(), "this"), None);
        let path = var.path().join(CHECK_RECORD);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, record("earlier", Outcome::Uncorrectable).render()).unwrap();
        assert_eq!(read_from(var.path(), "this"), None);
        std::fs::write(&path, record("this", Outcome::Uncorrectable).render()).unwrap();
        let c = read_from(var.path(), "this").unwrap();
        assert!(c.needs_attention());
        let text = c.to_string();
        assert!(
            text.contains("/dev/vda4 HAS ERRORS e2fsck could not repair (exit 8)")
                && text.contains("cannot be mounted, even read-only")
                && text.contains("| e2fsck: Bad magic number")
                && text.contains("repair: e2fsck -f /dev/vda4, then reboot"),
            "{text}"
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["outcome"], "uncorrectable");
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_from(var.path(), "this"), None);
    }

    #[test]
    fn a_repaired_partition_is_no_alarm() {
        let mut r = record("b", Outcome::Corrected);
        r.e2fsck_exit = Some(1);
        r.damaged_mount = Some("/var/lib/pak/data-ro".into());
        let var = tempfile::tempdir().unwrap();
        let path = var.path().join(CHECK_RECORD);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, r.render()).unwrap();
        let c = read_from(var.path(), "b").unwrap();
        assert!(!c.needs_attention());
        assert!(c.to_string().contains("e2fsck corrected"), "{c}");
    }
}
