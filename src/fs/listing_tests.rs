//! Tests of streamed listings (`listing.rs`): a cold listing's first
//! `readdir` chunks are answered while its later waves of multi-reads are
//! still outstanding (held back by the fake), later offsets wait for their
//! entries, and one pass keeps its offsets through deletions and failures.
//! Every test runs on both kinds of mounts (per-handle and per-inode
//! listings).

use std::time::Duration;

use super::tests::{Harness, registered_harness};
use super::*;
use crate::zk::ZkError;
use crate::zk::bulk::{BATCH_MAX_NODES, PROBE_NODES, WAVE_NODES};

const CHILDREN: usize = 5000;
/// The probe and the first wave answer; the later waves are held.
const FREE_BATCHES: u64 = 1 + (WAVE_NODES / BATCH_MAX_NODES) as u64;
/// Entries loaded before the hold: ".", ".." and the children of the probe
/// and the first wave.
const LOADED: usize = 2 + PROBE_NODES + WAVE_NODES;
/// Longer than any step of an unheld listing takes (time is paused, so a
/// wait that nothing can end elapses at once).
const PATIENCE: Duration = Duration::from_secs(30);

fn child(i: usize) -> String {
    format!("c{i:04}")
}

/// One directory stream: a handle on writable mounts, the inode alone when
/// the kernel opens directories itself.
struct Dir {
    h: Harness,
    ino: u64,
    fh: u64,
}

impl Dir {
    /// A directory `/d` of [`CHILDREN`] small nodes, none cached, with the
    /// fake's multi-reads after [`FREE_BATCHES`] held.
    async fn cold(opens: Opens) -> Dir {
        let d = Dir::of(opens, |_| b"x".to_vec()).await;
        d.h.zk.hold_batch_reads_after(FREE_BATCHES);
        d
    }

    /// A directory `/d` of [`CHILDREN`] nodes with these data, none cached.
    async fn of(opens: Opens, data: impl Fn(usize) -> Vec<u8>) -> Dir {
        let h = registered_harness(opens);
        h.zk.create("/d", b"", 0).expect("d");
        for i in 0..CHILDREN {
            h.zk.create(&format!("/d/{}", child(i)), &data(i), 0)
                .expect("child");
        }
        let ino =
            h.fs.lookup(super::inode::ROOT_INO, "d".as_ref())
                .await
                .expect("d")
                .attr
                .ino;
        let fh = match opens {
            Opens::Handles => h.fs.opendir(ino).expect("opendir"),
            Opens::Kernel => 0,
        };
        Dir { h, ino, fh }
    }

    /// The names a `readdir` at `offset` answers (from `offset` on), and
    /// whether the pass is complete.
    async fn at(&self, offset: u64) -> Result<(Vec<String>, bool), FsError> {
        let by_inode = self.h.fs.opens() == Opens::Kernel;
        let listed = self
            .h
            .fs
            .listing(by_inode, self.ino, self.fh, offset)
            .await?;
        let names = listed.from(offset).map(|(_, e)| e.name.clone()).collect();
        Ok((names, listed.is_complete()))
    }

    /// [`Self::at`], failing the test if it does not finish in [`PATIENCE`].
    async fn answered(&self, offset: u64) -> Result<(Vec<String>, bool), FsError> {
        tokio::time::timeout(PATIENCE, self.at(offset))
            .await
            .unwrap_or_else(|_| panic!("offset {offset} not answered"))
    }

    /// Whether a `readdir` at `offset` is still waiting after [`PATIENCE`]
    /// (the request is dropped then, as the adapter's timeout does).
    async fn waits(&self, offset: u64) -> bool {
        tokio::time::timeout(PATIENCE, self.at(offset))
            .await
            .is_err()
    }

    /// A file `name` created here with one byte written, not closed yet
    /// (writable mounts): its handle.
    async fn being_created(&self, name: &str) -> u64 {
        let (_, fh) = self
            .h
            .fs
            .create(self.ino, name.as_ref(), super::tests::WRITE_TRUNC, true, 1)
            .await
            .expect("create");
        self.h.fs.write(fh, 0, b"y").await.expect("write");
        fh
    }

    /// Release the held waves; the whole pass whose first chunk was `first`.
    async fn released_after(&self, first: Vec<String>) -> Vec<String> {
        self.h.zk.release_batch_reads(None);
        let mut all = first;
        all.extend(self.rest(LOADED as u64).await.expect("rest"));
        all
    }

    /// Every name of the pass from `offset` on, chunk by chunk, as the
    /// kernel reads it (each chunk from where the last one ended).
    async fn rest(&self, mut offset: u64) -> Result<Vec<String>, FsError> {
        let mut names = Vec::new();
        loop {
            let (chunk, complete) = self.answered(offset).await?;
            if chunk.is_empty() {
                assert!(complete, "an empty answer ends the pass");
                return Ok(names);
            }
            offset += chunk.len() as u64;
            names.extend(chunk);
        }
    }
}

fn expected(without: &[usize]) -> Vec<String> {
    [".".to_string(), "..".to_string()]
        .into_iter()
        .chain((0..CHILDREN).filter(|i| !without.contains(i)).map(child))
        .collect()
}

const BOTH: [Opens; 2] = [Opens::Handles, Opens::Kernel];

#[tokio::test(start_paused = true)]
async fn a_cold_listing_answers_its_first_entries_while_later_waves_are_outstanding() {
    for opens in BOTH {
        let d = Dir::cold(opens).await;
        let (first, complete) = d.answered(0).await.expect("offset 0");
        assert_eq!(first, expected(&[])[..LOADED], "{opens:?}");
        assert!(!complete, "{opens:?}");
        // Within what is loaded, a later offset is answered at once.
        let (within, _) = d.answered(100).await.expect("offset 100");
        assert_eq!(within, expected(&[])[100..LOADED], "{opens:?}");
        // The next entry waits for its wave ...
        assert!(d.waits(LOADED as u64).await, "{opens:?}");
        d.h.zk.release_batch_reads(None);
        // ... and then the pass goes on where it was, to its end.
        let rest = d.rest(LOADED as u64).await.expect("rest");
        assert_eq!(rest, expected(&[])[LOADED..], "{opens:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_does_not_cancel_the_load_of_its_listing() {
    for opens in BOTH {
        let d = Dir::cold(opens).await;
        d.answered(0).await.expect("offset 0");
        assert!(d.waits(LOADED as u64).await, "{opens:?}");
        d.h.zk.release_batch_reads(None);
        // Nobody waits for the pass for a while (time is paused: this
        // lets every task run until all wait) ...
        tokio::time::sleep(PATIENCE).await;
        // ... and yet its load went on to the end (and a writable mount's
        // ACLs after it): the rest needs no round trip.
        let before = d.h.zk.requests();
        let rest = d.rest(LOADED as u64).await.expect("rest");
        assert_eq!(rest, expected(&[])[LOADED..], "{opens:?}");
        assert_eq!(d.h.zk.requests(), before, "{opens:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_deleted_during_a_streamed_listing_is_left_out_with_stable_offsets() {
    for opens in BOTH {
        let d = Dir::cold(opens).await;
        let (first, _) = d.answered(0).await.expect("offset 0");
        // Deleted before its wave is read (its event not seen yet).
        d.h.zk
            .delete(&format!("/d/{}", child(3000)))
            .expect("delete");
        d.h.zk.release_batch_reads(None);
        let rest = d.rest(first.len() as u64).await.expect("rest");
        let mut all = first.clone();
        all.extend(rest);
        assert_eq!(all, expected(&[3000]), "{opens:?}");
        // Every offset of the pass names the same entry (offset 0 last: it
        // starts the next pass).
        for offset in [1, 2, 2999, 3002, 4000, 0] {
            let (chunk, _) = d.answered(offset).await.expect("again");
            assert_eq!(chunk[0], all[offset as usize], "{opens:?} at {offset}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_later_wave_fails_only_the_offsets_that_need_it() {
    for opens in BOTH {
        let d = Dir::cold(opens).await;
        let (first, _) = d.answered(0).await.expect("offset 0");
        d.h.zk
            .release_batch_reads(Some(ZkError::Other("injected".into())));
        assert!(
            matches!(d.answered(LOADED as u64).await, Err(FsError::Zk { .. })),
            "{opens:?}"
        );
        // What was loaded stays answered.
        let (again, complete) = d.answered(5).await.expect("offset 5");
        assert_eq!(again, first[5..], "{opens:?}");
        assert!(!complete, "{opens:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cached_directory_is_listed_without_waiting() {
    for opens in BOTH {
        let d = Dir::cold(opens).await;
        d.h.zk.release_batch_reads(None);
        let first = d.rest(0).await.expect("first pass");
        // A new pass over the cached children needs no round trip: it is
        // complete at the first poll (the adapter answers it on the FUSE
        // thread), with the same entries.
        let mut again = std::pin::pin!(d.at(0));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match again.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok((names, complete))) => {
                assert_eq!(names, first, "{opens:?}");
                assert!(complete, "{opens:?}");
            }
            _ => panic!("{opens:?}: a cached listing waited"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pointer_to_a_child_of_a_later_wave_is_listed_as_a_symlink() {
    let last = format!("/d/{}", child(CHILDREN - 1));
    for opens in BOTH {
        let d = Dir::of(opens, |i| {
            if i == 0 {
                last.as_bytes().to_vec()
            } else {
                b"x".to_vec()
            }
        })
        .await;
        // The probe, the read of its pointer's target and the first wave
        // answer; the later waves (with the target's own) are held.
        d.h.zk.hold_batch_reads_after(FREE_BATCHES + 1);
        let by_inode = opens == Opens::Kernel;
        let listed =
            d.h.fs
                .listing(by_inode, d.ino, d.fh, 0)
                .await
                .expect("offset 0");
        let (_, pointer) = listed.from(2).next().expect("the first child");
        assert_eq!(
            (pointer.name.as_str(), pointer.attr.kind),
            ("c0000", FileKind::Symlink),
            "{opens:?}"
        );
        assert!(
            !listed.is_complete(),
            "{opens:?}: answered before the last waves"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_created_before_a_pass_and_committed_during_it_is_listed_once() {
    // Writable mounts only: a read-only one creates nothing.
    let d = Dir::cold(Opens::Handles).await;
    let fh = d.being_created("new").await;
    // The pass reads the child list while "new" is still being created ...
    let (first, _) = d.answered(0).await.expect("offset 0");
    assert!(!first.iter().any(|n| n == "new"));
    // ... and it reaches ZooKeeper while the later waves are outstanding.
    d.h.fs.flush(fh).await.expect("close sends");
    d.h.fs.release(fh).await.expect("release");
    assert!(d.h.zk.exists("/d/new"));
    let all = d.released_after(first).await;
    assert_eq!(
        all.iter().filter(|n| *n == "new").count(),
        1,
        "the pass lists the created file exactly once"
    );
    assert_eq!(all.len(), expected(&[]).len() + 1);
}

#[tokio::test(start_paused = true)]
async fn only_a_short_reply_of_a_complete_pass_answers_its_end() {
    let d = Dir::cold(Opens::Kernel).await;
    let at = |offset| d.h.fs.listing(true, d.ino, 0, offset);
    // A reply that took every entry loaded so far, short of its buffer,
    // while later waves are outstanding: not the end (the adapter must not
    // end the pass, or the next offset would be answered empty).
    let loading = at(0).await.expect("offset 0");
    assert!(!loading.answers_end(false));
    d.h.zk.release_batch_reads(None);
    let last = tokio::time::timeout(PATIENCE, at(expected(&[]).len() as u64 - 1))
        .await
        .expect("answered")
        .expect("last offset");
    assert!(last.answers_end(false), "short reply with the last entry");
    assert!(
        !last.answers_end(true),
        "a full reply may have stopped short of it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_file_whose_create_failed_during_a_pass_is_not_listed() {
    let d = Dir::cold(Opens::Handles).await;
    let fh = d.being_created("new").await;
    let (first, _) = d.answered(0).await.expect("offset 0");
    // Its create is lost with the connection, which stays down: the pass
    // can read nothing of it at its end.
    d.h.zk.inject(crate::zk::fake::WriteFault::LostRequest);
    assert!(
        d.h.fs.flush(fh).await.is_err(),
        "the close reports the failure"
    );
    let _ = d.h.fs.release(fh).await;
    assert!(!d.h.zk.exists("/d/new"));
    let all = d.released_after(first).await;
    assert!(!all.iter().any(|n| n == "new"), "the failed file is listed");
    assert!(
        all == expected(&[]),
        "listed exactly the children that exist"
    );
}
