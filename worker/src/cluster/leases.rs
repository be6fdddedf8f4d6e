//! The reader of one data slot of an epoch (see `funnel_common::slots`): the slot's leases
//! asked from the coordinator in queue order, their row groups streamed and decoded off the
//! training thread, shuffled in a buffer seeded by (epoch, slot) and cut into the slot's share
//! of the global batch. Each batch comes with the lease of each row, which the step's commit
//! vote reports to the ledger.
//!
//! The stream is the same whoever reads the slot and whenever: a member that takes over the
//! slot of a dead one reads its queue from the start and drops, from each batch, the rows the
//! ledger already holds (every lease comes with its committed-rows bitmap). Rows are dropped
//! after shuffling, not before, so the batches that remain are exactly those the dead member
//! would have produced next.

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

/// What a slot's reader sends the training thread.
#[derive(Debug)]
pub enum SlotItem {
    /// A batch and the lease of each of its rows.
    Batch(Batch, Vec<u64>),
    /// The slot's queue is done (decode statistics of this reader).
    End(DecodeStats),
    /// Reading failed.
    Failed(WorkerError),
}

/// Who reads one data slot, and how.
#[derive(Debug, Clone)]
pub struct SlotReader {
    /// The coordinator.
    pub client: Client,
    /// This worker's id.
    pub worker_id: String,
    /// The data slot, and how many the job has (`cluster.workers`).
    pub slot: usize,
    /// Data slots of the job.
    pub slots: usize,
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

impl SlotReader {
    /// Starts reading the slot's queue of `epoch` on the current runtime; dropping the
    /// receiver stops it.
    pub fn spawn(self, epoch: u32) -> mpsc::Receiver<SlotItem> {
        let (tx, rx) = mpsc::channel(self.prefetch.max(1));
        tokio::spawn(async move {
            match self.run(epoch, &tx).await {
                Ok(Some(stats)) => {
                    let _ = tx.send(SlotItem::End(stats)).await;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(SlotItem::Failed(e)).await;
                }
            }
        });
        rx
    }

    /// Reads the queue to its end (`Some(stats)`), or until the receiver is gone (`None`).
    async fn run(
        self,
        epoch: u32,
        tx: &mpsc::Sender<SlotItem>,
    ) -> Result<Option<DecodeStats>, WorkerError> {
        let batch = funnel_common::slots::slot_batch_size(self.global_batch, self.slots, self.slot);
        // Seeded by slot, not by rank: ranks change when members die, slots do not.
        let shuffle_seed = SplitMix64::derive(
            self.seed,
            0x5EED_0000 ^ u64::from(epoch) ^ ((self.slot as u64) << 40),
        )
        .next_u64();
        let mut batcher = Batcher::new(batch, self.shuffle_rows, shuffle_seed);
        let mut stats = DecodeStats::default();
        // (object, row group) -> lease, and each lease's committed rows.
        let mut owner: HashMap<(u32, u32), u64> = HashMap::new();
        let mut committed: HashMap<u64, Vec<u8>> = HashMap::new();
        for index in 0u32.. {
            let resp = self
                .client
                .clone()
                .next_lease(pb::NextLeaseRequest {
                    worker_id: self.worker_id.clone(),
                    generation: 0,
                    epoch,
                    slot: self.slot as u32,
                    index,
                })
                .await
                .map_err(|s| refused("NextLease", s))?
                .into_inner();
            let Some(lease) = resp.lease else {
                break;
            };
            for shard in &lease.shards {
                let object = self.check_shard(shard)?;
                let rgs = shard.first_row_group as usize
                    ..(shard.first_row_group + shard.row_groups) as usize;
                for rg in rgs.clone() {
                    owner.insert((object as u32, rg as u32), lease.lease_id);
                }
                if shard.consumed.iter().any(|&b| b != 0) {
                    committed.insert(lease.lease_id, shard.consumed.to_vec());
                }
                let mut stream = self.reader.read(Shard {
                    object,
                    row_groups: rgs,
                });
                while let Some(rg) = stream.next().await {
                    let rg = rg?;
                    stats.merge(&rg.stats);
                    for b in batcher.push(&rg.batch) {
                        if !send(tx, b, &owner, &committed).await? {
                            return Ok(None);
                        }
                    }
                }
            }
        }
        for b in batcher.finish() {
            if !send(tx, b, &owner, &committed).await? {
                return Ok(None);
            }
        }
        Ok(Some(stats))
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

/// Sends `batch` without its rows already committed (all of a batch's rows, or none, in
/// practice: steps commit whole batches); `false` once the receiver is gone.
async fn send(
    tx: &mpsc::Sender<SlotItem>,
    batch: Batch,
    owner: &HashMap<(u32, u32), u64>,
    committed: &HashMap<u64, Vec<u8>>,
) -> Result<bool, WorkerError> {
    let leases = leases_of(&batch, owner)?;
    let (batch, leases) = if committed.is_empty() {
        (batch, leases)
    } else {
        let keep: Vec<usize> = (0..batch.rows)
            .filter(|&r| {
                committed
                    .get(&leases[r])
                    .is_none_or(|bits| !Consumed(bits).contains(batch.origins[r].row))
            })
            .collect();
        if keep.len() == batch.rows {
            (batch, leases)
        } else {
            let kept_leases = keep.iter().map(|&r| leases[r]).collect();
            (batch.take(&keep), kept_leases)
        }
    };
    if batch.rows == 0 {
        return Ok(!tx.is_closed());
    }
    Ok(tx.send(SlotItem::Batch(batch, leases)).await.is_ok())
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
}
