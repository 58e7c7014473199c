//! The kernel command line options pak's boot uses.

use crate::disk::{NotASlot, Slot};
use crate::verity::{BadVerity, Verity};

/// What `/init` needs from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootArgs {
    /// `pak.slot=a|b`: which root partition (`root-a`, `root-b`). A value
    /// naming neither is kept as the error, so `/init` can say what the
    /// loader entry got wrong.
    pub slot: Option<Result<Slot, NotASlot>>,
    /// `pak.generation=N`.
    pub generation: Option<u64>,
    /// `pak.debug=shell`: a shell instead of a reboot on failure.
    pub debug_shell: bool,
    /// `init=`: the system's init (default `/sbin/init`).
    pub init: Option<String>,
    /// `pak.watchdog=SECONDS`: how long a boot on trial may take to be
    /// marked good before the watchdog resets the machine; 0 disables.
    pub watchdog: Option<u32>,
    /// `pak.verity=`, `pak.verity_salt=`, `pak.verity_blocks=`: the slot's
    /// dm-verity root (see [`crate::verity`]); `None` for an entry written
    /// before pak had verity roots.
    pub verity: Option<Result<Verity, BadVerity>>,
}

pub fn parse(cmdline: &str) -> BootArgs {
    let mut a = BootArgs::default();
    for word in cmdline.split_whitespace() {
        match word.split_once('=') {
            Some(("pak.slot", v)) => a.slot = Some(v.parse()),
            Some(("pak.generation", v)) => a.generation = v.parse().ok(),
            Some(("pak.debug", "shell")) => a.debug_shell = true,
            Some(("init", v)) => a.init = Some(v.to_string()),
            Some(("pak.watchdog", v)) => a.watchdog = v.parse().ok(),
            _ => {}
        }
    }
    a.verity = Verity::from_cmdline(cmdline);
    a
}

#[cfg(test)]
mod tests {
    use crate::disk::{NotASlot, Slot};

    #[test]
    fn parses_pak_options() {
        let a = super::parse(
            "console=ttyS0 pak.slot=b pak.generation=7 pak.debug=shell init=/bin/sh quiet",
        );
        assert_eq!(a.slot, Some(Ok(Slot::B)));
        assert_eq!(a.generation, Some(7));
        assert!(a.debug_shell);
        assert_eq!(a.init.as_deref(), Some("/bin/sh"));
        assert_eq!(super::parse("pak.watchdog=30").watchdog, Some(30));
        assert_eq!(super::parse("").slot, None);
        assert_eq!(super::parse("").verity, None);
        let v = super::parse(&format!(
            "pak.verity={} pak.verity_salt=00 pak.verity_blocks=9",
            "1".repeat(64)
        ))
        .verity;
        assert_eq!(v.unwrap().unwrap().data_blocks, 9);
        assert_eq!(
            super::parse("pak.slot=c").slot,
            Some(Err(NotASlot("c".into())))
        );
    }
}
