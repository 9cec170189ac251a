//! Measures the memory cost of a (user, cap key) counter and of a remembered
//! impression id with a counting global allocator. Run with `--nocapture` to
//! see the figures; the assertions only guard against regressions.
//!
//! One test in this file on purpose: the allocator counts the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use segd::freq::counters::{Counters, EntryKey, IdSet, IdState};

struct CountingAllocator;

static ALLOCATED_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's
// arguments unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        ALLOCATED_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) }
    }
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocated() -> isize {
    ALLOCATED_BYTES.load(Ordering::Relaxed)
}

const ENTRIES: u64 = 200_000;

#[test]
fn memory_per_counter_and_per_impression_id() {
    for (keys_per_user, impressions_per_entry) in [(1u64, 1u64), (1, 3), (1, 10), (3, 1), (3, 3)] {
        let before = allocated();
        let counters = Counters::new();
        for index in 0..ENTRIES {
            let user = index / keys_per_user;
            let entry = EntryKey {
                user_fingerprint: xxhash_rust::xxh3::xxh3_64(&user.to_le_bytes()),
                cap_key_hash: 0x5eed_0000 + index % keys_per_user,
            };
            for impression in 0..impressions_per_entry {
                counters.add(entry, 1_700_000_000 + (impression * 3_600) as i64);
            }
        }
        let bytes_per_entry = (allocated() - before) as f64 / ENTRIES as f64;
        let estimate = counters.figures().approximate_bytes as f64 / ENTRIES as f64;
        println!(
            "{keys_per_user} key(s) per user, {impressions_per_entry:>2} impression(s) per (user, key): \
             {bytes_per_entry:.1} bytes allocated per (user, key) \
             (stats estimate {estimate:.1}; allocator overhead not included)"
        );
        assert!(bytes_per_entry < 120.0 + 16.0 * impressions_per_entry as f64);
        drop(counters);
    }

    let before = allocated();
    let ids = IdSet::new();
    for index in 0..ENTRIES {
        ids.check_and_insert(
            xxhash_rust::xxh3::xxh3_64(&index.to_be_bytes()),
            IdState {
                at_unix_seconds: 1_700_000_000,
                log_seq: 1,
            },
        );
    }
    let bytes_per_id = (allocated() - before) as f64 / ENTRIES as f64;
    println!("impression id remembered: {bytes_per_id:.1} bytes");
    assert!(bytes_per_id < 80.0);
}
