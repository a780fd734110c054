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

/// One node's answer to a bulk read.
pub type NodeAnswer = Result<(Vec<u8>, NodeStat), ZkError>;

/// Reads `paths` wave by wave; the caller records each wave's answers before
/// asking for the next, so at most one wave of data is held at a time.
pub struct BulkRead<'a> {
    sizes: &'a [Option<usize>],
    next: usize,
    seen_bytes: usize,
    seen_nodes: usize,
}

impl<'a> BulkRead<'a> {
    /// `sizes[i]`: the data size of node `i` if known (from an older `Stat`).
    pub fn new(sizes: &'a [Option<usize>]) -> Self {
        BulkRead {
            sizes,
            next: 0,
            seen_bytes: 0,
            seen_nodes: 0,
        }
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
        let len = if self.guess().is_none() && self.sizes[start].is_none() {
            PROBE_NODES
        } else {
            WAVE_NODES
        };
        self.next = (start + len).min(self.sizes.len());
        Some(start..self.next)
    }

    /// Split `wave` into consecutive multi-reads of about [`BATCH_BYTES`].
    pub fn plan(&self, wave: Range<usize>) -> Vec<Range<usize>> {
        let guess = self.guess().unwrap_or(0);
        let mut batches = Vec::new();
        let (mut start, mut bytes) = (wave.start, 0);
        for i in wave.clone() {
            let weight = self.sizes[i].unwrap_or(guess) + ANSWER_OVERHEAD;
            if i > start && (bytes + weight > BATCH_BYTES || i - start >= BATCH_MAX_NODES) {
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
}
