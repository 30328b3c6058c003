//! The process's allocator: jemalloc, except that zeroed allocations are zeroed by writing.
//!
//! jemalloc zeroes a large `calloc` it serves from memory it already holds by handing the pages
//! back to the kernel (`madvise(MADV_DONTNEED)`) and letting them fault in again as zero pages.
//! candle allocates every gradient zeroed, some as large as the embedding tables: each training
//! step then faulted those pages in afresh, and with threads on two cores every fault flushed
//! the other core's TLB (perf: over a third of a teacher search's time in
//! `ptep_clear_flush`). Writing zeros over memory jemalloc holds costs a fraction of that, and
//! on fresh memory it faults the pages in just as the first write would.

use std::alloc::{GlobalAlloc, Layout};

pub struct Allocator;

// SAFETY: every call is forwarded to jemalloc with the caller's layout; `alloc_zeroed` zeroes
// the `layout.size()` bytes jemalloc returned before handing them out.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { tikv_jemallocator::Jemalloc.alloc(layout) };
        if !p.is_null() {
            unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeroed_memory_is_zero_even_when_reused() {
        for _ in 0..4 {
            let mut v = vec![0xabu8; 8 << 20];
            v[12345] = 7;
            drop(v);
            let z = vec![0u8; 8 << 20];
            assert!(z.iter().all(|&b| b == 0));
            let z = vec![0f32; 3 << 20];
            assert!(z.iter().all(|&x| x == 0.0));
        }
    }
}
