//! The daemon's allocator and page settings (Linux/glibc only; a no-op elsewhere).
//!
//! Owns how much memory the process keeps from the system, not what it
//! stores: glibc gives every thread that allocates its own arena and returns
//! freed memory only from the top of each heap, so a daemon with a dozen
//! threads and bursts of short-lived allocations (a 10,000-entry listing)
//! keeps several times its live data resident. We use one arena (per-thread
//! caches still serve most small allocations without locks) and a
//! background thread that hands free pages back once enough have gathered.
//!
//! The same thread drops the process's mappings of program code it touched
//! once and no longer runs. Start-up (option parsing, the connect, the
//! mount) and the first burst of each kind fault in megabytes of the
//! executable's and the libraries' code and read-only data, and the
//! kernel's fault-around maps up to 16 neighbouring pages with each fault:
//! measured, ~5 MiB of the executable was resident after a 10,000-entry
//! listing, more than the whole heap of a small mount. Only clean file
//! pages are dropped (never a page with private changes, see
//! [`release_file_pages`]); they stay in the page cache, and code that runs
//! again comes back with a minor fault. It must not know about nodes,
//! inodes or FUSE.

/// Free bytes the allocator may hold before the trimmer returns them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_ABOVE_FREE_BYTES: usize = 1 << 20;

/// How often the trimmer looks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Resident file pages (code, read-only data) may grow this much beyond
/// what stayed mapped after the last release before they are released again.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RELEASE_FILE_PAGES_ABOVE_BYTES: u64 = 1 << 20;

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

/// Start the thread that, every [`TRIM_INTERVAL`], returns free heap pages
/// to the system when more than [`TRIM_ABOVE_FREE_BYTES`] are free, and
/// drops mappings of code and read-only data no longer in use when more than
/// [`RELEASE_FILE_PAGES_ABOVE_BYTES`] were mapped since the last time.
pub fn spawn_trimmer() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::thread::Builder::new()
        .name("zkfs-trim".into())
        .spawn(|| {
            let mut file_pages = FilePages::default();
            loop {
                std::thread::sleep(TRIM_INTERVAL);
                // SAFETY: both calls only inspect or adjust the allocator's
                // own state and are thread-safe in glibc.
                unsafe {
                    if libc::mallinfo2().fordblks > TRIM_ABOVE_FREE_BYTES {
                        libc::malloc_trim(0);
                    }
                }
                file_pages.tick();
            }
        })?;
    Ok(())
}

/// When to release file pages: once more than
/// [`RELEASE_FILE_PAGES_ABOVE_BYTES`] were mapped since the last release
/// (after start-up, after a burst that ran code that had not run since).
/// Code that keeps running faults back in after a release (measured: an
/// idle mount's ~0.3 MiB within seconds); while that stays below the
/// threshold a steady working set is not chased, and were it larger, a
/// release would cost it a few dozen minor faults (16 pages per fault).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[derive(Default)]
struct FilePages {
    /// Resident file-backed bytes right after the last release (0 before
    /// the first).
    floor: u64,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
impl FilePages {
    fn tick(&mut self) {
        let Some(resident) = resident_file_bytes() else {
            return;
        };
        if resident > self.floor + RELEASE_FILE_PAGES_ABOVE_BYTES {
            release_file_pages();
            self.floor = resident_file_bytes().unwrap_or(0);
        }
    }
}

/// Resident file-backed (and shared) bytes of this process, from
/// `/proc/self/statm`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn resident_file_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let shared_pages: u64 = statm.split_whitespace().nth(2)?.parse().ok()?;
    Some(shared_pages * page_size())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}

/// Drop this process's mappings of clean pages of its read-only private
/// file mappings (the executable's and the libraries' code and constants).
/// Pages are chosen one by one from `/proc/self/pagemap`: only pages that
/// are present and still the file's own page (not a private copy, such as
/// relocated data or a debugger's breakpoint) are dropped, so no content
/// can change; a later access maps the same page from the page cache again
/// (or reads it from the file, as after any reclaim). Returns the bytes
/// unmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_file_pages() -> u64 {
    use std::os::unix::fs::FileExt;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
        return 0;
    };
    let page = page_size();
    let mut released = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let inode = fields.nth(2).unwrap_or("0");
        let path = fields.next().unwrap_or("");
        // Private, not writable, backed by a real file.
        let perms = perms.as_bytes();
        if perms.len() < 4 || perms[1] != b'-' || perms[3] != b'p' {
            continue;
        }
        if inode == "0" || !path.starts_with('/') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        // Runs of droppable pages, read 512 pagemap entries at a time.
        let mut run_start: Option<u64> = None;
        let mut flush = |from: &mut Option<u64>, to: u64| {
            if let Some(from) = from.take() {
                // SAFETY: the range lies inside a read-only private file
                // mapping of this process and holds only pages identical to
                // the file's; MADV_DONTNEED on it only unmaps them.
                let ok = unsafe {
                    libc::madvise(
                        from as *mut libc::c_void,
                        (to - from) as usize,
                        libc::MADV_DONTNEED,
                    )
                } == 0;
                if ok {
                    released += to - from;
                }
            }
        };
        let mut addr = start;
        let mut entries = [0u8; 512 * 8];
        while addr < end {
            let pages = ((end - addr) / page).min(512);
            let bytes = &mut entries[..pages as usize * 8];
            if pagemap.read_exact_at(bytes, addr / page * 8).is_err() {
                flush(&mut run_start, addr);
                break;
            }
            for entry in bytes.chunks_exact(8) {
                let bits = u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
                let present = bits & (1 << 63) != 0;
                let file_page = bits & (1 << 61) != 0;
                if present && file_page {
                    run_start.get_or_insert(addr);
                } else {
                    flush(&mut run_start, addr);
                }
                addr += page;
            }
        }
        flush(&mut run_start, end);
    }
    released
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn releasing_file_pages_keeps_code_and_data_working() {
        static TABLE: [u64; 4096] = {
            let mut t = [0u64; 4096];
            let mut i = 0;
            while i < t.len() {
                t[i] = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                i += 1;
            }
            t
        };
        let sum = |t: &[u64]| t.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        let before = sum(std::hint::black_box(&TABLE));
        assert!(release_file_pages() > 0, "this test's own code is mapped");
        // Code runs and constants read the same after their pages were dropped.
        assert_eq!(sum(std::hint::black_box(&TABLE)), before);
        let text = format!("{:?}", std::hint::black_box(vec![1, 2, 3]));
        assert_eq!(text, "[1, 2, 3]");
    }
}
