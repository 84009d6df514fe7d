//! The `herald` binary: all behaviour lives in the library; this only runs the CLI.

fn main() -> std::process::ExitCode {
    herald::cli::run()
}
