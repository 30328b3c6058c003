//! Handing a retired version's memory back to the system. A version's compiled plans are tens
//! of megabytes of buffers allocated on the loading thread and on every inference thread that
//! ran it; with glibc's defaults, what they leave behind after retirement stayed resident and
//! the process grew with every load/retire cycle (BENCHMARKS.md, "Rollout: memory").

/// Allocations this large or larger are mapped on their own and unmapped when freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Pins glibc's mmap threshold at its initial value. Left dynamic, glibc raises the threshold
/// to the size of each mapped block freed (up to 32 MiB), so after the first retirement the
/// next version's weights and plan buffers are carved out of the heap, where they fragment it
/// and where freeing them returns nothing. Called once, before the first model loads.
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt sets an allocator tunable; it is thread-safe and has no other effect.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Returns freed memory to the system. glibc keeps freed blocks in the arena of the thread that
/// allocated them, and only gives back the top of a heap unless asked; this releases every
/// whole free page of every arena.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free memory to the system; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}
