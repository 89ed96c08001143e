//! The `auxilio` binary: everything is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    auxilio_server::cli::run()
}
