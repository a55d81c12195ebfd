//! The `shopflow` binary: everything happens in the library.

/// Differential dataflow allocates and frees many short-lived batches; mimalloc measured faster
/// than the system allocator for it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shopflow::cli::main()
}
