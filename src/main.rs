//! The `maildistiller` binary: everything it does is in the library's `cli` module, so the
//! command line, its dispatch and its exit codes are one room (see `src/cli/mod.rs`).

fn main() -> std::process::ExitCode {
    maildistiller::cli::main()
}
