fn main() -> std::process::ExitCode {
    voxbridge_cli::main_with_args(std::env::args_os())
}
