//! Handing a retired version's memory back to the system. A version's compiled plans are
//! megabytes of buffers allocated on the loading thread and on every inference thread that ran
//! it; allocators keep freed memory for reuse, so without asking, the process grew with every
//! load/retire cycle (BENCHMARKS.md, "Rollout: memory").

/// Returns freed memory to the system: jemalloc's (everything Rust allocates) by purging every
/// arena's unused pages, and glibc's (what ONNX Runtime allocates) by trimming every arena.
pub fn release_freed() {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: a void control, called with no old or new value.
    const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated and the control takes and returns nothing; jemalloc
    // purges under its own locks.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
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
