//! The `shopflow` binary: everything happens in the library.

/// Differential dataflow allocates and frees many short-lived batches; mimalloc measured faster
/// than the system allocator for it (docs/benchmarks.md). It is built without transparent huge
/// pages (`no_thp` in Cargo.toml): buffers freed each tick were purged and faulted back in as 2 MiB
/// pages, each zeroed by the kernel, which cost 10–15% of the engine's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shopflow::commands::main()
}
