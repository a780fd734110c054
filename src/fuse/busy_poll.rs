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
//! one CPU for its length plus one window, and only a CPU nobody else wants:
//! while it polls the worker runs under `SCHED_IDLE`, so any other thread
//! that wakes on its CPU (the ZooKeeper client, the server on the same host,
//! the reader itself) runs at once instead of waiting for the scheduler's
//! next tick (4 ms at `HZ=250`). Going back to the normal policy needs
//! `CAP_SYS_NICE` (or an `RLIMIT_NICE` of 20); without it the daemon does not
//! poll at all ([`can_yield_cpu`]).
//!
//! Owns only the device's `O_NONBLOCK` flag, the worker's scheduling policy
//! and the governor thread. It knows nothing of requests beyond "one arrived
//! now"; fuser's worker loop retries reads that find nothing (`EAGAIN`),
//! which is what polls.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Switches the FUSE device between polling and sleeping.
pub struct BusyPoll {
    window: Duration,
    epoch: Instant,
    /// When the last request arrived, in nanoseconds since `epoch`.
    last_request_ns: AtomicU64,
    /// When the last request somebody waits for arrived (not a release).
    last_waited_ns: AtomicU64,
    polling: AtomicBool,
    /// Serialises starting and ending polling (flag, device, policy).
    transition: Mutex<()>,
    /// Thread id of the worker that reports requests (0 until the first).
    worker: AtomicI32,
    device: OnceLock<OwnedFd>,
    governor: OnceLock<Thread>,
}

/// Set the scheduling policy of thread `tid` (0: the calling thread).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on a thread of this process.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// Whether a thread of this process may drop to `SCHED_IDLE` and come back
/// (needs `CAP_SYS_NICE` or `RLIMIT_NICE` >= 20). Tried on a throwaway thread.
pub fn can_yield_cpu() -> bool {
    std::thread::Builder::new()
        .name("zkfs-policy-probe".into())
        .spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

impl BusyPoll {
    /// Poll for `window` after each request (must be non-zero).
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            epoch: Instant::now(),
            last_request_ns: AtomicU64::new(0),
            last_waited_ns: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            transition: Mutex::new(()),
            worker: AtomicI32::new(0),
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
    /// Called on the worker thread, which is the one that polls.
    pub fn request_arrived(&self, waited: bool) {
        if self.worker.load(Ordering::Relaxed) == 0 {
            // SAFETY: gettid has no preconditions.
            self.worker
                .store(unsafe { libc::gettid() }, Ordering::Relaxed);
        }
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
        if burst
            && self.start_polling()
            && let Some(governor) = self.governor.get()
        {
            governor.unpark();
        }
    }

    /// The request just seen waits on ZooKeeper: its answer, and whatever
    /// the caller does next, is at least a network round trip away. Stop
    /// polling now rather than take a CPU from the work that answers it.
    pub fn request_deferred(&self) {
        if self.polling.load(Ordering::Acquire) {
            self.stop_polling();
        }
    }

    /// Poll the device with the worker at idle priority; false if already.
    fn start_polling(&self) -> bool {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if self.polling.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.set_nonblocking(true);
        self.set_worker_policy(libc::SCHED_IDLE);
        true
    }

    /// Sleep on the device again, the worker back at normal priority.
    fn stop_polling(&self) {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if self.polling.swap(false, Ordering::AcqRel) {
            self.set_nonblocking(false);
            self.set_worker_policy(libc::SCHED_OTHER);
        }
    }

    fn set_worker_policy(&self, policy: libc::c_int) {
        let tid = self.worker.load(Ordering::Relaxed);
        if tid != 0 && !set_policy(tid, policy) {
            tracing::debug!(
                tid,
                policy,
                error = %std::io::Error::last_os_error(),
                "cannot change the FUSE worker's scheduling policy"
            );
        }
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
            self.stop_polling();
            // A request that arrived while we decided saw `polling` still set
            // and did not re-arm: look once more.
            let idle = self
                .now_ns()
                .saturating_sub(self.last_request_ns.load(Ordering::Relaxed));
            if idle < window_ns {
                self.start_polling();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    /// This thread's scheduling policy.
    fn policy() -> libc::c_int {
        // SAFETY: queries the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

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
        // This thread plays the worker. Only a privileged one can get its
        // normal policy back (the daemon does not poll otherwise).
        // SAFETY: geteuid has no preconditions.
        let privileged = unsafe { libc::geteuid() } == 0;
        assert_eq!(can_yield_cpu(), privileged);
        assert_eq!(policy(), libc::SCHED_OTHER);

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
        assert_eq!(
            policy(),
            libc::SCHED_IDLE,
            "the poller only takes a spare CPU"
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
        if privileged {
            assert_eq!(
                policy(),
                libc::SCHED_OTHER,
                "the sleeper has its priority back"
            );
        }
        // And it starts again with the next burst.
        poll.request_arrived(true);
        poll.request_arrived(true);
        assert!(nonblocking(read_end.as_fd()));
        // A request that waits on ZooKeeper ends it at once.
        poll.request_deferred();
        assert!(!nonblocking(read_end.as_fd()));
        if privileged {
            assert_eq!(policy(), libc::SCHED_OTHER);
        }
    }
}
