//! The `shopflow` binary: everything happens in the library.

fn main() -> std::process::ExitCode {
    shopflow::cli::main()
}
