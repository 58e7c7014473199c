fn main() -> std::process::ExitCode {
    // In an initramfs pak is /init: the kernel starts it as PID 1.
    if std::process::id() == 1 {
        pak_boot::init::main_with(&pak_boot::init::Hooks {
            on_trial: pak::system::booted_on_trial,
        });
    }
    pak::cli::main()
}
