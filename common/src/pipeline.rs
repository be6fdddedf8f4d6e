//! An epoch of batches for a training thread: shards in a deterministic per-(seed, epoch) order,
//! read on the async runtime with the decode pool, shuffled and cut into fixed-size batches, and
//! handed over a bounded channel so the (synchronous) training thread never waits on I/O it
//! could have overlapped, and the reader never runs more than `prefetch` batches ahead.

use crate::batch::{Batch, Batcher};
use crate::decode::DecodeStats;
use crate::error::Result;
use crate::manifest::Shard;
use crate::reader::ShardReader;
use crate::rng::SplitMix64;
use futures::StreamExt;
use tokio::sync::mpsc;

/// What the training thread receives.
#[derive(Debug)]
pub enum EpochItem {
    /// The next batch.
    Batch(Batch),
    /// The epoch ended; what decoding counted over it.
    End(DecodeStats),
    /// Reading failed; the epoch stops here.
    Failed(crate::Error),
}

/// The order in which shards are read in `epoch`: a permutation fixed by (seed, epoch), so every
/// process computes the same plan and a resumed run replays the same order.
pub fn epoch_order(shards: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..shards).collect();
    SplitMix64::derive(seed, 0x0E90_C400 ^ epoch).shuffle(&mut order);
    order
}

/// Options of one epoch's stream.
#[derive(Debug, Clone, Copy)]
pub struct EpochOptions {
    /// Rows per batch.
    pub batch_size: usize,
    /// Rows in the shuffle window (0 = no shuffling).
    pub shuffle_rows: usize,
    /// Seed of the job.
    pub seed: u64,
    /// Epoch number (0-based).
    pub epoch: u64,
    /// Batches buffered ahead of the training thread.
    pub prefetch: usize,
}

/// Starts reading `shards` (in epoch order) on the current runtime; returns the receiving end
/// for the training thread (`blocking_recv`).
pub fn spawn_epoch(
    reader: ShardReader,
    shards: Vec<Shard>,
    opts: EpochOptions,
) -> mpsc::Receiver<EpochItem> {
    let (tx, rx) = mpsc::channel(opts.prefetch.max(1));
    tokio::spawn(async move {
        let order = epoch_order(shards.len(), opts.seed, opts.epoch);
        let shuffle_seed = SplitMix64::derive(opts.seed, 0x5EED_0000 ^ opts.epoch).next_u64();
        let mut batcher = Batcher::new(opts.batch_size, opts.shuffle_rows, shuffle_seed);
        let mut stats = DecodeStats::default();
        let mut stream = futures::stream::iter(order).flat_map(|i| reader.read(shards[i].clone()));
        while let Some(rg) = stream.next().await {
            let rg = match rg {
                Ok(rg) => rg,
                Err(e) => {
                    let _ = tx.send(EpochItem::Failed(e)).await;
                    return;
                }
            };
            stats.merge(&rg.stats);
            for b in batcher.push(&rg.batch) {
                if tx.send(EpochItem::Batch(b)).await.is_err() {
                    return; // the trainer stopped listening
                }
            }
        }
        for b in batcher.finish() {
            if tx.send(EpochItem::Batch(b)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(EpochItem::End(stats)).await;
    });
    rx
}

/// Collects a whole epoch (tests and evaluation of small sets).
pub async fn collect_epoch(
    reader: ShardReader,
    shards: Vec<Shard>,
    opts: EpochOptions,
) -> Result<(Vec<Batch>, DecodeStats)> {
    let mut rx = spawn_epoch(reader, shards, opts);
    let mut batches = Vec::new();
    while let Some(item) = rx.recv().await {
        match item {
            EpochItem::Batch(b) => batches.push(b),
            EpochItem::End(stats) => return Ok((batches, stats)),
            EpochItem::Failed(e) => return Err(e),
        }
    }
    Err(crate::Error::Task(
        "epoch reader stopped without an end marker".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_deterministic_permutation_per_epoch() {
        let a = epoch_order(50, 7, 0);
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1));
        assert_ne!(a, epoch_order(50, 8, 0));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert!(epoch_order(0, 1, 1).is_empty());
    }
}
