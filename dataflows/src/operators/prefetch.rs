//! Loading memory ahead of its use: the engine's state is far larger than the caches, and its
//! operators know the addresses they will touch a few records before they touch them.

/// Asks the processor to load every cache line of `value`, without waiting for them.
#[inline]
pub(crate) fn prefetch<T>(value: &T) {
    prefetch_bytes((value as *const T).cast(), std::mem::size_of::<T>());
}

/// Asks the processor to load the cache lines of `len` bytes from `start`, without waiting for
/// them.
#[inline]
pub(crate) fn prefetch_bytes(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        let mut line = start as usize & !(LINE - 1);
        let end = (start as usize).wrapping_add(len);
        while line < end {
            // SAFETY: SSE is part of every x86_64 processor, and a prefetch is a hint that
            // never faults, whatever the address, and changes no memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}
