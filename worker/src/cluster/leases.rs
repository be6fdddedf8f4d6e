//! A worker's data for one epoch: leases pulled from the coordinator one at a time, their row
//! groups streamed and decoded off the training thread, shuffled in a bounded buffer and cut
//! into this rank's share of the global batch. Each batch comes with the rows it consumed per
//! lease, which ride the step's commit vote into the ledger.
//!
//! When the coordinator has no lease for it, the reader says so ([`LeaseItem::Idle`]) and waits
//! for a newer ring generation: a worker that dies hands its unfinished leases back, and the
//! generation changes at that moment, so an idle reader asks again then. A returned lease comes
//! with the bitmap of its committed rows, which the reader drops.

use std::collections::HashMap;

use funnel_common::batch::{Batch, Batcher};
use funnel_common::decode::DecodeStats;
use funnel_common::manifest::Shard;
use funnel_common::reader::ShardReader;
use funnel_common::rng::SplitMix64;
use funnel_proto::v1 as pb;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::coordinator::{Client, refused};
use crate::WorkerError;

/// What the training thread receives.
#[derive(Debug)]
pub enum LeaseItem {
    /// A batch and the lease of each of its rows.
    Batch(Batch, Vec<u64>),
    /// No lease left for this worker in the coordinator's generation `generation` (decode
    /// statistics so far). More may come once the generation is newer.
    Idle {
        /// The generation the coordinator answered in.
        generation: u64,
        /// Decode statistics of the epoch so far.
        stats: DecodeStats,
    },
    /// Reading failed.
    Failed(WorkerError),
}

/// Rows per step of `rank` when `ranks` workers share a global batch of `global` rows: the
/// first `global % ranks` ranks take one row more.
pub fn rank_batch_size(global: usize, ranks: usize, rank: usize) -> usize {
    let ranks = ranks.max(1);
    global / ranks + usize::from(rank < global % ranks)
}

/// Who reads, and how.
#[derive(Debug, Clone)]
pub struct LeaseReader {
    /// The coordinator.
    pub client: Client,
    /// This worker's id.
    pub worker_id: String,
    /// The newest ring generation this worker knows of.
    pub generation: watch::Receiver<u64>,
    /// This rank and the ring size.
    pub rank: usize,
    /// Ring size.
    pub ranks: usize,
    /// The training data.
    pub reader: ShardReader,
    /// Global batch size.
    pub global_batch: usize,
    /// Shuffle window (rows).
    pub shuffle_rows: usize,
    /// Job seed.
    pub seed: u64,
    /// Batches buffered ahead of the training thread.
    pub prefetch: usize,
}

impl LeaseReader {
    /// Starts reading `epoch` on the current runtime.
    pub fn spawn(self, epoch: u32) -> mpsc::Receiver<LeaseItem> {
        let (tx, rx) = mpsc::channel(self.prefetch.max(1));
        tokio::spawn(async move {
            if let Err(e) = self.run(epoch, &tx).await {
                let _ = tx.send(LeaseItem::Failed(e)).await;
            }
        });
        rx
    }

    async fn run(mut self, epoch: u32, tx: &mpsc::Sender<LeaseItem>) -> Result<(), WorkerError> {
        let batch = rank_batch_size(self.global_batch, self.ranks, self.rank);
        let shuffle_seed = SplitMix64::derive(
            self.seed,
            0x5EED_0000 ^ u64::from(epoch) ^ ((self.rank as u64) << 40),
        )
        .next_u64();
        let mut batcher = Batcher::new(batch, self.shuffle_rows, shuffle_seed);
        let mut stats = DecodeStats::default();
        // (object, row group) -> lease.
        let mut owner: HashMap<(u32, u32), u64> = HashMap::new();
        loop {
            let generation = *self.generation.borrow_and_update();
            let resp = self
                .client
                .next_lease(pb::NextLeaseRequest {
                    worker_id: self.worker_id.clone(),
                    generation,
                    epoch,
                })
                .await
                .map_err(|s| refused("NextLease", s))?
                .into_inner();
            let Some(lease) = resp.lease else {
                let rest = std::mem::replace(
                    &mut batcher,
                    Batcher::new(batch, self.shuffle_rows, shuffle_seed ^ resp.generation),
                );
                for b in rest.finish() {
                    let leases = leases_of(&b, &owner)?;
                    if tx.send(LeaseItem::Batch(b, leases)).await.is_err() {
                        return Ok(());
                    }
                }
                let idle = LeaseItem::Idle {
                    generation: resp.generation,
                    stats: stats.clone(),
                };
                if tx.send(idle).await.is_err() {
                    return Ok(());
                }
                // Ask again only in a newer generation (or stop with the trainer).
                let newer = self
                    .generation
                    .wait_for(|g| *g > resp.generation)
                    .await
                    .is_ok();
                if !newer || tx.is_closed() {
                    return Ok(());
                }
                continue;
            };
            for shard in &lease.shards {
                let object = self.check_shard(shard)?;
                let rgs = shard.first_row_group as usize
                    ..(shard.first_row_group + shard.row_groups) as usize;
                for rg in rgs.clone() {
                    owner.insert((object as u32, rg as u32), lease.lease_id);
                }
                let consumed = Consumed(&shard.consumed);
                let mut stream = self.reader.read(Shard {
                    object,
                    row_groups: rgs,
                });
                while let Some(rg) = stream.next().await {
                    let rg = rg?;
                    stats.merge(&rg.stats);
                    let mut rows = rg.batch;
                    if !shard.consumed.is_empty() {
                        // Rows committed before the lease came back from a dead worker.
                        let keep: Vec<usize> = (0..rows.rows)
                            .filter(|&r| !consumed.contains(rows.origins[r].row))
                            .collect();
                        rows = rows.take(&keep);
                    }
                    for b in batcher.push(&rows) {
                        let leases = leases_of(&b, &owner)?;
                        if tx.send(LeaseItem::Batch(b, leases)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// The shard's object in this worker's manifest, checked against the coordinator's path.
    fn check_shard(&self, shard: &pb::Shard) -> Result<usize, WorkerError> {
        let objects = &self.reader.manifest().objects;
        let i = shard.object_index as usize;
        let bad = |what: String| WorkerError::Coordinator(format!("NextLease: {what}"));
        let o = objects
            .get(i)
            .ok_or_else(|| bad(format!("object #{i} of {}", objects.len())))?;
        if o.path.as_ref() != shard.object {
            return Err(bad(format!(
                "object #{i} is {}, the lease names {}",
                o.path, shard.object
            )));
        }
        let end = u64::from(shard.first_row_group) + u64::from(shard.row_groups);
        if shard.row_groups == 0 || end > o.row_groups.len() as u64 {
            return Err(bad(format!(
                "row groups {}..{end} of {} (it has {})",
                shard.first_row_group,
                o.url,
                o.row_groups.len()
            )));
        }
        Ok(i)
    }
}

/// A lease's committed-rows bitmap as the coordinator sends it (little-endian u64 words).
struct Consumed<'a>(&'a [u8]);

impl Consumed<'_> {
    fn contains(&self, row: u32) -> bool {
        let byte = (row / 8) as usize;
        self.0.get(byte).is_some_and(|b| b >> (row % 8) & 1 == 1)
    }
}

/// The lease of each row of `batch`.
fn leases_of(batch: &Batch, owner: &HashMap<(u32, u32), u64>) -> Result<Vec<u64>, WorkerError> {
    batch
        .origins
        .iter()
        .map(|o| {
            owner.get(&(o.object, o.row_group)).copied().ok_or_else(|| {
                WorkerError::Internal(format!(
                    "row {} of object #{} row group {} belongs to no lease",
                    o.row, o.object, o.row_group
                ))
            })
        })
        .collect()
}

/// The rows of `batch` per lease (`leases[r]` is row r's), leases in increasing order: what a
/// step's commit vote reports.
pub fn rows_by_lease(batch: &Batch, leases: &[u64]) -> Vec<(u64, Vec<u32>)> {
    let mut out: Vec<(u64, Vec<u32>)> = Vec::new();
    for (o, &lease) in batch.origins.iter().zip(leases) {
        match out.iter_mut().find(|(l, _)| *l == lease) {
            Some((_, rows)) => rows.push(o.row),
            None => out.push((lease, vec![o.row])),
        }
    }
    out.sort_unstable_by_key(|(l, _)| *l);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumed_bitmap_reads_little_endian_words() {
        // Rows 3, 4, 5 and 70 committed, as the coordinator's RowSet encodes them.
        let mut bytes = vec![0u8; 16];
        bytes[0] = 0b0011_1000;
        bytes[8] = 0b0100_0000;
        let c = Consumed(&bytes);
        let set: Vec<u32> = (0..200).filter(|&r| c.contains(r)).collect();
        assert_eq!(set, [3, 4, 5, 70]);
    }

    #[test]
    fn a_batchs_rows_are_reported_per_lease() {
        use funnel_common::batch::RowOrigin;
        let mut b = Batch::empty(0, 0, 0, 0);
        b.origins = [(7, 3), (2, 0), (7, 1), (2, 9)]
            .into_iter()
            .map(|(rg, row)| RowOrigin {
                object: 0,
                row_group: rg,
                row,
            })
            .collect();
        b.rows = 4;
        let leases = [70, 20, 70, 20];
        assert_eq!(
            rows_by_lease(&b, &leases),
            [(20, vec![0, 9]), (70, vec![3, 1])]
        );
    }

    #[test]
    fn ranks_share_the_global_batch_exactly() {
        for global in [1, 7, 64, 1000] {
            for ranks in 1..=5 {
                if global < ranks {
                    continue;
                }
                let sizes: Vec<usize> = (0..ranks)
                    .map(|r| rank_batch_size(global, ranks, r))
                    .collect();
                assert_eq!(sizes.iter().sum::<usize>(), global);
                assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
            }
        }
    }
}
