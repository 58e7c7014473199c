//! Boot-time logic shared by the initramfs `/init` and the host-side `pak`.

pub mod bls;
pub mod cmdline;
pub mod data;
pub mod disk;
pub mod init;
pub mod verity;
