//! Booting images under QEMU: the machine, and the scripted test driver.

pub mod qemu;
pub mod vmtest;
