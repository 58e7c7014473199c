//! Secure Boot signing: the key and certificate a user signs boot files
//! with (`pak key generate --secure-boot`, `[boot] secure-boot`), and
//! Authenticode signatures on PE images (systemd-boot, unified kernel
//! images).
//!
//! One folder beside `image/` rather than inside it: signing is used by
//! the image build, by `pak key generate` and by the QEMU firmware set-up
//! (which enrolls the same certificate), and holds no image logic.

pub mod authenticode;
pub mod key;
