//! Boot-time logic shared by the initramfs `/init` and the host-side `pak`.
