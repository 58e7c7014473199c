//! Booting images under QEMU: the machine, its provisioning seed, and the
//! scripted test driver.

pub mod ovmf;
pub mod qemu;
pub mod seed;
pub mod vmtest;
