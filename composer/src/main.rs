fn main() -> std::process::ExitCode {
    pak::cli::main()
}
