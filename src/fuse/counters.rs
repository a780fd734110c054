//! Counts of the requests the kernel sent, by kind.
//!
//! Shown as the mount root's `user.zkfs.kernel_requests` (and by
//! `zkfs status`), so an operator or a benchmark can see which operations
//! reach the daemon and which the kernel's caches absorb. Counting is one
//! relaxed atomic add per request; it must not take locks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Request kinds worth telling apart (the rest are counted as `other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOp {
    Lookup,
    Getattr,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Opendir,
    Readdir,
    Releasedir,
    Getxattr,
    Readlink,
    Create,
    Other,
}

const OPS: [(KernelOp, &str); 14] = [
    (KernelOp::Lookup, "lookup"),
    (KernelOp::Getattr, "getattr"),
    (KernelOp::Open, "open"),
    (KernelOp::Read, "read"),
    (KernelOp::Write, "write"),
    (KernelOp::Flush, "flush"),
    (KernelOp::Release, "release"),
    (KernelOp::Opendir, "opendir"),
    (KernelOp::Readdir, "readdir"),
    (KernelOp::Releasedir, "releasedir"),
    (KernelOp::Getxattr, "getxattr"),
    (KernelOp::Readlink, "readlink"),
    (KernelOp::Create, "create"),
    (KernelOp::Other, "other"),
];

#[derive(Default)]
pub struct KernelRequestCounters {
    counts: [AtomicU64; OPS.len()],
}

impl KernelRequestCounters {
    pub fn count(&self, op: KernelOp) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `lookup=3 getattr=0 …` in a fixed order.
    pub fn summary(&self) -> String {
        OPS.iter()
            .map(|(op, name)| {
                format!(
                    "{name}={}",
                    self.counts[*op as usize].load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_enum_order() {
        for (index, (op, _)) in OPS.iter().enumerate() {
            assert_eq!(*op as usize, index);
        }
        let counters = KernelRequestCounters::default();
        counters.count(KernelOp::Open);
        counters.count(KernelOp::Open);
        counters.count(KernelOp::Other);
        let summary = counters.summary();
        assert!(
            summary.starts_with("lookup=0 getattr=0 open=2 "),
            "{summary}"
        );
        assert!(summary.ends_with(" other=1"), "{summary}");
    }
}
