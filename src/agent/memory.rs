//! The allocator's settings (glibc malloc), made once at start, and the periodic trim that
//! hands memory freed inside the heaps back to the system.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free pages inside the heaps are returned (`malloc_trim`).
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Sets glibc malloc's thresholds. Call before any other thread exists.
///
/// - **mmap threshold, fixed at 2 MiB + 4 KiB.** LMDB allocates a 2 MiB dirty-page list and a
///   1 MiB free-page list for every nested write transaction, i.e. for every applied command.
///   Below that threshold each was a fresh mapping: two `mmap`s, two `munmap`s and their page
///   faults per command, ~15% of the server's CPU under write load. Fixed, not glibc's
///   default sliding threshold, which after the first multi-megabyte response would keep
///   every such buffer in the heap.
/// - **trim threshold 4 MiB**: that much free memory stays at the top of an arena instead of
///   being handed back and faulted in again by the next command.
/// - **two arenas** (glibc's default is 8 per core): fewer heaps to fragment.
///
/// Buffers below the threshold that are freed inside a heap stay resident until
/// [`trim_periodically`] returns their pages.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024 + 4096);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every [`TRIM_EVERY`], returns whole free pages inside the heaps to the system (glibc's
/// `malloc_trim`, on a blocking thread: it walks every free chunk). With 5,000 checks this
/// keeps resident memory at ~49 MB instead of 60–65 MB (`bash bench/run.sh --only checks`).
pub async fn trim_periodically(shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; glibc locks each arena it walks.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}
