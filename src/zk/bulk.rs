//! Bulk reads: `getData` of many nodes grouped into multi-reads (ZooKeeper
//! 3.6+ answers many reads in one request), sized so that one answer stays
//! near [`BATCH_BYTES`], with a wave of such requests in flight at once.
//!
//! One multi-read of 256 small nodes costs the server about what one `getData`
//! does, so a cold listing of 10,000 children takes a few dozen requests
//! instead of 10,000. The risk is an answer too big for the server's heap,
//! so sizes are planned: known sizes (a stale node's last `Stat`) count as
//! they are, unknown ones as the mean of what this load has seen so far, and a
//! load that knows nothing starts with a small probe.
//!
//! A resync ([`BulkRead::for_resync`]) re-reads nodes whose sizes are all
//! known from their cached `Stat`s, so it needs no probe and no guess: its
//! multi-reads are bounded by bytes alone, up to [`RESYNC_BATCH_BYTES`]
//! (half of ZooKeeper's default `jute.maxbuffer`), which lets a reconnect
//! re-check a few thousand small nodes in one or two requests.
//!
//! Owns only the grouping and the size guess. It knows nothing of the cache
//! (the store records the answers) and sends nothing but
//! [`ZkBackend::get_data_batch`].

use std::ops::Range;

use super::backend::{NodeStat, ZkBackend, ZkError};

/// Aim for answers of about this many bytes per multi-read.
pub const BATCH_BYTES: usize = 256 * 1024;
/// At most this many nodes per multi-read.
pub const BATCH_MAX_NODES: usize = 256;
/// Nodes read before anything is known of their sizes: a first, small
/// multi-read whose answers set the guess for the rest.
pub const PROBE_NODES: usize = 32;
/// Nodes whose answers may be outstanding at once (one wave of multi-reads).
pub const WAVE_NODES: usize = 2048;
/// What one answer weighs besides its data (a `Stat` and framing).
const ANSWER_OVERHEAD: usize = 96;
/// A resync's multi-reads aim for answers of about this many bytes: half of
/// the 1 MiB `jute.maxbuffer` most clients accept, so an answer never
/// approaches that limit even if nodes grew since their cached `Stat`.
pub const RESYNC_BATCH_BYTES: usize = 512 * 1024;
/// A resync's multi-reads hold at most this many nodes.
pub const RESYNC_MAX_NODES: usize = 8192;
/// A resync keeps answers of about this many bytes outstanding at once.
pub const RESYNC_WAVE_BYTES: usize = 4 * RESYNC_BATCH_BYTES;

/// How a load groups its reads.
#[derive(Clone, Copy, Debug)]
struct Limits {
    batch_bytes: usize,
    batch_nodes: usize,
    /// A wave ends after this many nodes or (by known or guessed size)
    /// this many bytes, whichever comes first.
    wave_nodes: usize,
    wave_bytes: usize,
}

const LOAD: Limits = Limits {
    batch_bytes: BATCH_BYTES,
    batch_nodes: BATCH_MAX_NODES,
    wave_nodes: WAVE_NODES,
    wave_bytes: usize::MAX,
};

const RESYNC: Limits = Limits {
    batch_bytes: RESYNC_BATCH_BYTES,
    batch_nodes: RESYNC_MAX_NODES,
    wave_nodes: usize::MAX,
    wave_bytes: RESYNC_WAVE_BYTES,
};

/// One node's answer to a bulk read.
pub type NodeAnswer = Result<(Vec<u8>, NodeStat), ZkError>;

/// Reads `paths` wave by wave; the caller records each wave's answers before
/// asking for the next, so at most one wave of data is held at a time.
pub struct BulkRead {
    sizes: Vec<Option<usize>>,
    next: usize,
    seen_bytes: usize,
    seen_nodes: usize,
    limits: Limits,
}

impl BulkRead {
    /// `sizes[i]`: the data size of node `i` if known (from an older `Stat`).
    pub fn new(sizes: &[Option<usize>]) -> Self {
        BulkRead {
            sizes: sizes.to_vec(),
            next: 0,
            seen_bytes: 0,
            seen_nodes: 0,
            limits: LOAD,
        }
    }

    /// A resync's read of cached nodes: sizes (all known) bound the
    /// multi-reads by bytes, up to [`RESYNC_BATCH_BYTES`] and
    /// [`RESYNC_MAX_NODES`] each, [`RESYNC_WAVE_BYTES`] in flight.
    pub fn for_resync(sizes: &[Option<usize>]) -> Self {
        BulkRead {
            limits: RESYNC,
            ..BulkRead::new(sizes)
        }
    }

    fn weight(&self, i: usize) -> usize {
        self.sizes[i].unwrap_or(self.guess().unwrap_or(0)) + ANSWER_OVERHEAD
    }

    /// The guessed data size of a node whose size is unknown.
    fn guess(&self) -> Option<usize> {
        (self.seen_nodes > 0).then(|| self.seen_bytes / self.seen_nodes)
    }

    /// The indexes of the next wave, or `None` when all were read.
    pub fn next_wave(&mut self) -> Option<Range<usize>> {
        let start = self.next;
        if start >= self.sizes.len() {
            return None;
        }
        if self.guess().is_none() && self.sizes[start].is_none() {
            self.next = (start + PROBE_NODES).min(self.sizes.len());
            return Some(start..self.next);
        }
        let (mut end, mut bytes) = (start, 0usize);
        while end < self.sizes.len() && end - start < self.limits.wave_nodes {
            let weight = self.weight(end);
            if end > start && bytes.saturating_add(weight) > self.limits.wave_bytes {
                break;
            }
            bytes = bytes.saturating_add(weight);
            end += 1;
        }
        self.next = end;
        Some(start..end)
    }

    /// Split `wave` into consecutive multi-reads of about [`BATCH_BYTES`]
    /// (a resync's: [`RESYNC_BATCH_BYTES`]).
    pub fn plan(&self, wave: Range<usize>) -> Vec<Range<usize>> {
        let Limits {
            batch_bytes,
            batch_nodes,
            ..
        } = self.limits;
        let mut batches = Vec::new();
        let (mut start, mut bytes) = (wave.start, 0);
        for i in wave.clone() {
            let weight = self.weight(i);
            if i > start && (bytes + weight > batch_bytes || i - start >= batch_nodes) {
                batches.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += weight;
        }
        if start < wave.end {
            batches.push(start..wave.end);
        }
        batches
    }

    /// Read the nodes of `wave` (`paths` holds all nodes of the load, indexed
    /// like the sizes). Answers in order; a multi-read that failed as a whole
    /// gives its error to each of its nodes.
    pub async fn read<B: ZkBackend>(
        &mut self,
        backend: &B,
        paths: &[&str],
        wave: Range<usize>,
    ) -> Vec<NodeAnswer> {
        let batches = self.plan(wave.clone());
        // All requests leave before the first answer is awaited.
        let sent: Vec<_> = batches
            .iter()
            .map(|b| backend.get_data_batch(&paths[b.clone()]))
            .collect();
        let mut answers = Vec::with_capacity(wave.len());
        for (batch, request) in batches.into_iter().zip(sent) {
            match request.await {
                Ok(nodes) if nodes.len() == batch.len() => answers.extend(nodes),
                Ok(nodes) => {
                    let error = ZkError::Other(format!(
                        "multi-read answered {} of {} reads",
                        nodes.len(),
                        batch.len()
                    ));
                    answers.extend(batch.map(|_| Err(error.clone())));
                }
                Err(e) => answers.extend(batch.map(|_| Err(e.clone()))),
            }
        }
        for (data, _) in answers.iter().flatten() {
            self.seen_bytes += data.len();
            self.seen_nodes += 1;
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_that_knows_no_size_starts_with_a_probe() {
        let sizes = vec![None; 5000];
        let mut bulk = BulkRead::new(&sizes);
        assert_eq!(bulk.next_wave(), Some(0..PROBE_NODES));
        // Nothing seen yet: the probe is one multi-read.
        assert_eq!(bulk.plan(0..PROBE_NODES), vec![0..PROBE_NODES]);
        bulk.seen_bytes = 50 * 10;
        bulk.seen_nodes = 10;
        assert_eq!(
            bulk.next_wave(),
            Some(PROBE_NODES..PROBE_NODES + WAVE_NODES)
        );
    }

    #[test]
    fn small_nodes_fill_a_multi_read_up_to_its_node_cap() {
        let sizes = vec![Some(50); 1000];
        let bulk = BulkRead::new(&sizes);
        let plan = bulk.plan(0..1000);
        assert_eq!(plan.len(), 4);
        assert!(plan.iter().all(|b| b.len() <= BATCH_MAX_NODES));
        assert_eq!(plan.first(), Some(&(0..BATCH_MAX_NODES)));
        assert_eq!(plan.last().map(|b| b.end), Some(1000));
    }

    #[test]
    fn big_nodes_are_read_few_per_request() {
        // 1 MiB nodes: each alone exceeds the budget, so one per multi-read.
        let sizes = vec![Some(1 << 20); 3];
        assert_eq!(BulkRead::new(&sizes).plan(0..3), vec![0..1, 1..2, 2..3]);
        // Unknown sizes follow what was seen: big neighbours, small batches.
        let unknown = vec![None; 40];
        let mut bulk = BulkRead::new(&unknown);
        bulk.seen_bytes = 10 * 100_000;
        bulk.seen_nodes = 10;
        let plan = bulk.plan(0..40);
        assert!(plan.iter().all(|b| b.len() <= 3), "{plan:?}");
        assert_eq!(plan.iter().map(|b| b.len()).sum::<usize>(), 40);
    }

    #[test]
    fn a_resync_of_small_nodes_is_few_large_multi_reads() {
        // 2,500 cached nodes of 40 bytes: one multi-read, where a cold load
        // would send ten.
        let sizes = vec![Some(40); 2500];
        let mut resync = BulkRead::for_resync(&sizes);
        assert_eq!(resync.next_wave(), Some(0..2500));
        assert_eq!(resync.plan(0..2500), vec![0..2500]);
        assert_eq!(resync.next_wave(), None);
        let mut load = BulkRead::new(&sizes);
        let wave = load.next_wave().expect("a wave");
        assert_eq!(load.plan(wave).len(), WAVE_NODES / BATCH_MAX_NODES);
    }

    #[test]
    fn a_resync_bounds_its_answers_by_bytes() {
        // 10 KiB nodes: each multi-read stays within the resync budget, and a
        // wave within its byte budget, so memory stays bounded.
        let sizes = vec![Some(10 * 1024); 1000];
        let mut resync = BulkRead::for_resync(&sizes);
        let mut seen = 0;
        while let Some(wave) = resync.next_wave() {
            let wave_bytes: usize = wave.clone().map(|i| resync.weight(i)).sum();
            assert!(wave_bytes <= RESYNC_WAVE_BYTES, "{wave_bytes}");
            for batch in resync.plan(wave.clone()) {
                let bytes: usize = batch.clone().map(|i| resync.weight(i)).sum();
                assert!(bytes <= RESYNC_BATCH_BYTES, "{bytes}");
                seen += batch.len();
            }
        }
        assert_eq!(seen, 1000);
        // One node bigger than the budget still gets its own read.
        let huge = vec![Some(2 * RESYNC_WAVE_BYTES)];
        let mut resync = BulkRead::for_resync(&huge);
        assert_eq!(resync.next_wave(), Some(0..1));
        assert_eq!(resync.plan(0..1), vec![0..1]);
    }
}
