//! The process allocator: mimalloc, except that requests of
//! `HUGE_ALLOC_BYTES` or more are served by `mmap(MAP_NORESERVE)`.
//!
//! Why mimalloc: a small request allocates a handful of short-lived blocks
//! (tasks, channel slots, reply buffers); under glibc malloc those cost a
//! third of the server's CPU per request (`_int_malloc` and
//! `malloc_consolidate` led the profile, see ARCHITECTURE.md, "The
//! allocator"). mimalloc's per-thread free lists suit one thread per core.
//!
//! Why: the `kafka-protocol` crate (0.15 to 0.18 at least; upstream PRs
//! kafka-protocol-rs#152, #161 and #200 are still open) decodes an array by
//! calling `Vec::with_capacity(n)` with `n` read from the wire, before it
//! decodes a single element. Eight hostile bytes ask for
//! `i32::MAX * size_of::<T>()` (about 150 GB for Metadata topics); the
//! system allocator refuses, and Rust aborts the whole process
//! ("memory allocation of 154618822584 bytes failed", reproduced by
//! `server/tests/kafka_kcat.rs`): one bad request would take the broker down
//! for every client. With `MAP_NORESERVE` such a reservation is only address
//! space: it succeeds, no page is touched because the decoder fails on the
//! first missing element, and the `Vec` is dropped with the decode error.
//! Strom itself never allocates anything near this size (every buffer has a
//! limit far below it, see `limits.rs`), so this path serves only such lies.
//! Hosts with strict overcommit (`vm.overcommit_memory=2`) ignore
//! `MAP_NORESERVE`; `tuning/check` warns about that mode.
//!
//! Invariant: a block is unmapped by `dealloc` exactly when it was mapped by
//! `alloc`: the same size test on the same layout decides both.

use mimalloc::MiMalloc as System;
use std::alloc::{GlobalAlloc, Layout};

/// Allocations at least this large are address-space reservations.
pub const HUGE_ALLOC_BYTES: usize = 1 << 30;

pub struct StromAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_ALLOC_BYTES && layout.align() <= 4096
}

unsafe impl GlobalAlloc for StromAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: an anonymous private mapping; no file, no fixed address.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            return p.cast();
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Fresh anonymous mappings are zero-filled.
            return unsafe { self.alloc(layout) };
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from the mmap in `alloc` with this size.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
            return;
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold (either way): move the bytes.
        // SAFETY: a fresh block of the new layout.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes,
            // and `ptr` was allocated here with `layout`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    /// A reservation far beyond memory succeeds as address space and is
    /// released; ordinary allocations are unaffected.
    #[test]
    fn a_lying_capacity_is_address_space_not_an_abort() {
        let v: Vec<[u8; 72]> = Vec::with_capacity(std::hint::black_box(i32::MAX as usize));
        assert!(std::hint::black_box(v.capacity()) >= i32::MAX as usize);
        drop(v);
        let mut small: Vec<u8> = Vec::with_capacity(16);
        small.extend_from_slice(b"still works");
        assert_eq!(&small[..5], b"still");
    }
}
