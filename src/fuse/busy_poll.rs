//! Busy-polling of the FUSE device during bursts of requests.
//!
//! A cached read costs one synchronous round trip to the daemon (`OPEN`),
//! and most of that round trip is waking a sleeping thread on another CPU
//! (on virtual machines a wake-up of an idle CPU is a trip through the
//! hypervisor). While requests keep coming, the device is switched to
//! non-blocking mode: the FUSE worker then finds the next request by polling
//! instead of sleeping until the kernel wakes it. When no request arrived for
//! the polling window, a governor thread switches the device back to blocking
//! mode and the worker sleeps again. An idle mount costs no CPU; a burst costs
//! one CPU for its length plus one window. While it polls, the worker
//! yields its CPU after answering a request, at most every half
//! millisecond, so that threads waiting for that CPU are not held up until
//! the scheduler's next tick.
//!
//! Owns only the device's `O_NONBLOCK` flag, the governor thread and the
//! worker's yields. It knows nothing of requests beyond "one arrived now" and
//! "one was answered"; fuser's worker loop retries reads that find nothing
//! (`EAGAIN`), which is what polls.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Longest time the polling worker keeps its CPU without offering it to
/// other threads. A woken thread (the ZooKeeper client's I/O, the server on
/// the same host, anything) queued behind a busy-looping thread that does
/// not give way waits for the scheduler's tick: 4 ms at `HZ=250`. Measured
/// with a reader polling a node on a 2-vCPU machine: change propagation p99
/// 3–4 ms without yielding, 0.6–0.9 ms with a yield at most every 0.5 ms;
/// yielding after every answer cost the cached-read loop 5–10 µs (cause not
/// traced).
const YIELD_EVERY: Duration = Duration::from_micros(500);

/// Switches the FUSE device between polling and sleeping.
pub struct BusyPoll {
    window: Duration,
    epoch: Instant,
    /// When the last request arrived, in nanoseconds since `epoch`.
    last_request_ns: AtomicU64,
    /// When the last request somebody waits for arrived (not a release).
    last_waited_ns: AtomicU64,
    /// When the polling worker last yielded its CPU.
    last_yield_ns: AtomicU64,
    polling: AtomicBool,
    device: OnceLock<OwnedFd>,
    governor: OnceLock<Thread>,
}

impl BusyPoll {
    /// Poll for `window` after each request (must be non-zero).
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            epoch: Instant::now(),
            last_request_ns: AtomicU64::new(0),
            last_waited_ns: AtomicU64::new(0),
            last_yield_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            device: OnceLock::new(),
            governor: OnceLock::new(),
        }
    }

    /// Start governing `device` (the session's `/dev/fuse` descriptor; a
    /// duplicate is kept, so the flag is never set on a reused number).
    pub fn attach(self: &std::sync::Arc<Self>, device: BorrowedFd<'_>) -> std::io::Result<()> {
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
        let dup = unsafe { libc::fcntl(device.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("zkfs-busy-poll".into())
            .spawn(move || me.govern())?;
        let _ = self.device.set(owned);
        let _ = self.governor.set(handle.thread().clone());
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A request arrived (`waited`: its caller is blocked until the answer).
    /// Any request keeps polling going; polling starts when a waited-for
    /// request follows another within the window: a burst, whose next
    /// request is likely as close. A lone `cat` never starts it.
    pub fn request_arrived(&self, waited: bool) {
        let now = self.now_ns();
        self.last_request_ns.store(now, Ordering::Relaxed);
        if !waited || self.polling.load(Ordering::Relaxed) {
            if waited {
                self.last_waited_ns.store(now, Ordering::Relaxed);
            }
            return;
        }
        let previous = self.last_waited_ns.swap(now, Ordering::Relaxed);
        let burst = previous != 0 && now.saturating_sub(previous) < self.window.as_nanos() as u64;
        if burst && !self.polling.swap(true, Ordering::AcqRel) {
            self.set_nonblocking(true);
            if let Some(governor) = self.governor.get() {
                governor.unpark();
            }
        }
    }

    /// The request just seen waits on ZooKeeper: its answer, and whatever
    /// the caller does next, is at least a network round trip away. Stop
    /// polling now rather than take a CPU from the work that answers it.
    pub fn request_deferred(&self) {
        if self.polling.swap(false, Ordering::AcqRel) {
            self.set_nonblocking(false);
        }
    }

    /// The request just handled has been answered. While polling, offer
    /// the CPU to whoever waits for it, at most once per [`YIELD_EVERY`]
    /// (`true` when it did). The answer is already on its way, so the
    /// yield delays nobody's reply; skipping it would leave any thread
    /// queued behind this busy worker to wait for the scheduler's tick.
    pub fn request_answered(&self) -> bool {
        self.answered_at(self.now_ns())
    }

    fn answered_at(&self, now: u64) -> bool {
        if !self.polling.load(Ordering::Relaxed) {
            return false;
        }
        let last = self.last_yield_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) < YIELD_EVERY.as_nanos() as u64 {
            return false;
        }
        self.last_yield_ns.store(now, Ordering::Relaxed);
        // SAFETY: takes no arguments; on Linux it cannot fail.
        unsafe { libc::sched_yield() };
        true
    }

    fn set_nonblocking(&self, on: bool) {
        let Some(device) = self.device.get() else {
            return;
        };
        let fd = device.as_raw_fd();
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 {
                return;
            }
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
    }

    /// The governor: sleeps while the device sleeps; while it polls, checks
    /// once per window whether requests stopped, and if so ends polling.
    fn govern(&self) {
        let window_ns = self.window.as_nanos() as u64;
        loop {
            while !self.polling.load(Ordering::Acquire) {
                std::thread::park();
            }
            let idle = self
                .now_ns()
                .saturating_sub(self.last_request_ns.load(Ordering::Relaxed));
            if idle < window_ns {
                std::thread::sleep(Duration::from_nanos(window_ns - idle));
                continue;
            }
            self.set_nonblocking(false);
            self.polling.store(false, Ordering::Release);
            // A request that arrived while we decided saw `polling` still set
            // and did not re-arm: look once more.
            let idle = self
                .now_ns()
                .saturating_sub(self.last_request_ns.load(Ordering::Relaxed));
            if idle < window_ns && !self.polling.swap(true, Ordering::AcqRel) {
                self.set_nonblocking(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    fn nonblocking(fd: BorrowedFd<'_>) -> bool {
        // SAFETY: F_GETFL on a live descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    #[test]
    fn polls_while_requests_come_and_sleeps_after_the_window() {
        // A pipe stands in for the device: only its flags are touched.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors from pipe2.
        let (read_end, _write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let poll = Arc::new(BusyPoll::new(Duration::from_millis(20)));
        poll.attach(read_end.as_fd()).expect("attach");
        assert!(!nonblocking(read_end.as_fd()), "idle: blocking");

        poll.request_arrived(true);
        assert!(
            !nonblocking(read_end.as_fd()),
            "a lone request does not poll"
        );
        poll.request_arrived(false);
        assert!(
            !nonblocking(read_end.as_fd()),
            "nor does a release after it"
        );
        poll.request_arrived(true);
        assert!(
            nonblocking(read_end.as_fd()),
            "a second one soon after does"
        );
        // Requests closer together than the window keep it polling.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(5));
            poll.request_arrived(false);
            assert!(nonblocking(read_end.as_fd()));
        }
        // Quiet for several windows: back to blocking.
        let deadline = Instant::now() + Duration::from_secs(2);
        while nonblocking(read_end.as_fd()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!nonblocking(read_end.as_fd()), "quiet: blocking again");
        // And it starts again with the next burst.
        poll.request_arrived(true);
        poll.request_arrived(true);
        assert!(nonblocking(read_end.as_fd()));
        // A request that waits on ZooKeeper ends it at once.
        poll.request_deferred();
        assert!(!nonblocking(read_end.as_fd()));
    }

    #[test]
    fn yields_after_answers_while_polling_at_most_once_per_interval() {
        // No device attached: only the polling state matters here.
        let poll = BusyPoll::new(Duration::from_secs(10));
        let every = YIELD_EVERY.as_nanos() as u64;
        let start = 10 * every;
        assert!(!poll.answered_at(start), "not polling: never yields");
        poll.request_arrived(true);
        poll.request_arrived(true);
        assert!(poll.polling.load(Ordering::Relaxed), "a burst polls");
        assert!(poll.answered_at(start), "polling: yields");
        assert!(
            !poll.answered_at(start + every - 1),
            "not again within the interval"
        );
        assert!(poll.answered_at(start + every), "again after it");

        let poll = BusyPoll::new(Duration::from_secs(10));
        poll.request_arrived(true);
        poll.request_arrived(true);
        std::thread::sleep(YIELD_EVERY);
        assert!(poll.request_answered(), "on the real clock too");
    }
}
