//! The initramfs `/init` of pak images, standalone. Images use the `pak`
//! binary itself as `/init` (it runs this same code when started as PID 1);
//! this binary exists to run and debug `/init` on its own.

fn main() {
    pak_boot::init::main()
}
