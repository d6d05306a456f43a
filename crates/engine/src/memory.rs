//! Giving freed memory back to the system.
//!
//! A burst of large answers (200 list requests of several MB at once) grows
//! the heap by hundreds of MB. glibc's allocator keeps what is freed in its
//! per-thread arenas for reuse, so without help the process's resident
//! memory stays at the burst's peak for ever. Every few seconds the server
//! asks the allocator to return the free pages (`malloc_trim`): a few
//! milliseconds after a burst, microseconds when idle.

use std::time::Duration;

/// Starts the periodic give-back (a no-op where the C library is not glibc),
/// and keeps the allocator to two arenas: with one per thread, a burst's
/// leftovers are spread so thin that little can be given back.
pub fn give_back_periodically(every: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter; arenas already made stay.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold: glibc otherwise raises it after each large
        // free, and the next answers' buffers land in the arenas, where
        // they fragment them, instead of in their own mappings, which go
        // back to the system when freed.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim only walks the allocator's own arenas.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
