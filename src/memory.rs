//! The daemon's allocator settings (glibc only; a no-op elsewhere).
//!
//! Owns how much memory the process keeps from the system, not what it
//! stores: glibc gives every thread that allocates its own arena and returns
//! freed memory only from the top of each heap, so a daemon with a dozen
//! threads and bursts of short-lived allocations (a 10,000-entry listing)
//! keeps several times its live data resident. We use one arena (per-thread
//! caches still serve most small allocations without locks) and a
//! background thread that hands free pages back once enough have gathered.
//! It must not know about nodes, inodes or FUSE.

/// Free bytes the allocator may hold before the trimmer returns them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_ABOVE_FREE_BYTES: usize = 1 << 20;

/// How often the trimmer looks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Use a single malloc arena unless `MALLOC_ARENA_MAX` says otherwise.
/// Call before any thread is started.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator parameters; called before
        // other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Start the thread that returns free heap pages to the system every
/// [`TRIM_INTERVAL`] when more than [`TRIM_ABOVE_FREE_BYTES`] are free.
pub fn spawn_trimmer() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("zkfs-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                // SAFETY: both calls only inspect or adjust the allocator's
                // own state and are thread-safe in glibc.
                unsafe {
                    if libc::mallinfo2().fordblks > TRIM_ABOVE_FREE_BYTES {
                        libc::malloc_trim(0);
                    }
                }
            }
        })?;
    Ok(())
}
