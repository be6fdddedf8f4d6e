//! A worker's data for one epoch: leases pulled from the coordinator one at a time, their row
//! groups streamed and decoded off the training thread, shuffled in a bounded buffer and cut
//! into this rank's share of the global batch. Each batch comes with the ledger cursors it moves
//! (rows of each lease consumed so far), which ride the step's commit vote.

use std::collections::HashMap;

use funnel_common::batch::{Batch, Batcher};
use funnel_common::decode::DecodeStats;
use funnel_common::manifest::Shard;
use funnel_common::reader::ShardReader;
use funnel_common::rng::SplitMix64;
use funnel_proto::v1 as pb;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::coordinator::{Client, refused};
use crate::WorkerError;

/// What the training thread receives.
#[derive(Debug)]
pub enum LeaseItem {
    /// A batch and the cursors `(lease id, rows consumed)` of the leases it drew from.
    Batch(Batch, Vec<(u64, u64)>),
    /// This worker's share of the epoch has ended.
    End(DecodeStats),
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
    /// This worker's id and generation.
    pub worker_id: String,
    /// Generation.
    pub generation: u64,
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
        // (object, row group) -> lease, and rows of each lease handed to the trainer so far.
        let mut owner: HashMap<(u32, u32), u64> = HashMap::new();
        let mut consumed: HashMap<u64, u64> = HashMap::new();
        loop {
            let resp = self
                .client
                .next_lease(pb::NextLeaseRequest {
                    worker_id: self.worker_id.clone(),
                    generation: self.generation,
                    epoch,
                })
                .await
                .map_err(|s| refused("NextLease", s))?
                .into_inner();
            let Some(lease) = resp.lease else { break };
            for shard in &lease.shards {
                let object = self.check_shard(shard)?;
                let rgs = shard.first_row_group as usize
                    ..(shard.first_row_group + shard.row_groups) as usize;
                for rg in rgs.clone() {
                    owner.insert((object as u32, rg as u32), lease.lease_id);
                }
                consumed.insert(lease.lease_id, shard.skip_rows);
                let mut skip = shard.skip_rows;
                let mut stream = self.reader.read(Shard {
                    object,
                    row_groups: rgs,
                });
                while let Some(rg) = stream.next().await {
                    let rg = rg?;
                    stats.merge(&rg.stats);
                    let mut rows = rg.batch;
                    if skip > 0 {
                        // Rows a committed step already consumed (a lease resumed mid-way).
                        let keep: Vec<usize> = (0..rows.rows)
                            .filter(|&r| u64::from(rows.origins[r].row) >= skip)
                            .collect();
                        skip = skip.saturating_sub(rows.rows as u64);
                        rows = rows.take(&keep);
                    }
                    for b in batcher.push(&rows) {
                        let cursors = advance(&b, &owner, &mut consumed);
                        if tx.send(LeaseItem::Batch(b, cursors)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        for b in batcher.finish() {
            let cursors = advance(&b, &owner, &mut consumed);
            if tx.send(LeaseItem::Batch(b, cursors)).await.is_err() {
                return Ok(());
            }
        }
        let _ = tx.send(LeaseItem::End(stats)).await;
        Ok(())
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

/// Counts `batch`'s rows per lease and returns the new cursors of the leases it touched.
fn advance(
    batch: &Batch,
    owner: &HashMap<(u32, u32), u64>,
    consumed: &mut HashMap<u64, u64>,
) -> Vec<(u64, u64)> {
    let mut touched: Vec<u64> = Vec::new();
    for o in &batch.origins {
        if let Some(&lease) = owner.get(&(o.object, o.row_group)) {
            *consumed.entry(lease).or_default() += 1;
            if !touched.contains(&lease) {
                touched.push(lease);
            }
        }
    }
    touched.sort_unstable();
    touched
        .into_iter()
        .map(|l| (l, consumed.get(&l).copied().unwrap_or(0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
