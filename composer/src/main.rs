fn main() -> std::process::ExitCode {
    // In an initramfs pak is /init: the kernel starts it as PID 1.
    if std::process::id() == 1 {
        pak_boot::init::main();
    }
    pak::cli::main()
}
