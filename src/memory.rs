//! When freed heap memory goes back to the operating system: after a pack
//! load (glibc's heap), and never from a request thread (mimalloc's).
//!
//! Loading a pack materializes its bitmaps (hundreds of MB of small roaring
//! containers at 10M users) only to derive the user-major index and free them.
//! glibc keeps such freed chunks in its arenas, so without a trim the
//! process's resident memory stays ~40 % above what the served data needs
//! (measured: 1.66x the pack file's size at 10M users instead of ~1.2x).
//!
//! mimalloc, the binaries' allocator, gives freed memory back by itself:
//! once freed memory has sat a second (its purge delay), whichever thread
//! next runs mimalloc's periodic collection in an allocation `madvise`s the
//! free ranges away, and a later allocation there faults fresh pages in
//! again. On a reader thread that was a 5.7 ms `madvise` in the middle of
//! `Lookup`s during a push (BENCHMARKS.md, "Tenth session").
//! [`keep_freed_heap_memory`] turns that off: freed memory stays with the
//! process for its next allocations, so its resident heap is its peak. That
//! is small when packs are format 2, served from their files (at 10M users
//! ~110 MB after four pushes, where it stays); a format-1 pack's load leaves
//! its build's peak resident.
//!
//! A few FFI calls, one of the crate's two `unsafe` modules (the other is
//! `pack::mapped`, the mapping of pack files).

/// `mi_option_purge_delay`: its place in `mi_option_e` of mimalloc v3's
/// `mimalloc.h` (libmimalloc-sys names only some of the options). The test
/// below pins it by the option's documented default.
const MIMALLOC_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable through which mimalloc reads the same option at
/// start-up; when an operator set it, their value stands.
const MIMALLOC_PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Tells mimalloc never to give freed heap memory back to the OS (purge
/// delay -1), unless `MIMALLOC_PURGE_DELAY` says otherwise. Call it first
/// in `main`, before threads start.
pub fn keep_freed_heap_memory() {
    if std::env::var_os(MIMALLOC_PURGE_DELAY_ENV).is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: mi_option_set stores an integer in mimalloc's option table; it
    // may be called at any time from any thread, and -1 is a documented
    // value of this option ("no purging at all").
    unsafe {
        libmimalloc_sys::mi_option_set(MIMALLOC_PURGE_DELAY, -1);
    }
}

/// Returns free heap pages of every malloc arena to the OS. Runs in the
/// caller's thread and can take tens of milliseconds: call it off the request
/// path, after a load or swap.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes a plain integer, touches only glibc's own
    // allocator state under its locks, and is safe to call from any thread at
    // any time; 0 means keep no extra padding at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    fn purge_delay() -> std::ffi::c_long {
        #[allow(unsafe_code)]
        // SAFETY: reads an integer from mimalloc's option table.
        unsafe {
            libmimalloc_sys::mi_option_get(super::MIMALLOC_PURGE_DELAY)
        }
    }

    #[test]
    fn freed_heap_memory_is_kept_by_the_purge_delay_option() {
        if std::env::var_os(super::MIMALLOC_PURGE_DELAY_ENV).is_some() {
            return;
        }
        // mimalloc v3's default purge delay (options.c): the index is the
        // purge delay's, not another option's.
        assert_eq!(purge_delay(), 1000);
        super::keep_freed_heap_memory();
        assert_eq!(purge_delay(), -1);
    }

    #[test]
    fn trimming_after_freeing_is_harmless() {
        let blocks: Vec<Vec<u8>> = (0..1000).map(|n| vec![n as u8; 4096]).collect();
        drop(blocks);
        super::release_free_memory();
        let again: Vec<u8> = vec![7; 4096];
        assert_eq!(again[4095], 7);
    }
}
