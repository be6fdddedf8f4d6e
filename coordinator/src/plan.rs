//! Epoch plans and lease assignment (DESIGN §4): pure functions, so every decision is
//! reproducible from (manifest, seed, epoch, ring size) and testable without a network.
//!
//! A plan is the epoch's permutation of row-group shards (the same permutation a single worker
//! reads, `funnel_common::pipeline::epoch_order`); lease `i` of the plan is one shard, owned by
//! rank `i mod n`. Round-robin ownership (PyTorch's `DistributedSampler` does the same with
//! rows) makes step `k` of an `n`-worker job read the same rows as step `k` of one worker with
//! an `n` times larger batch when each row group holds one per-rank batch: the basis of the
//! equivalence test. Dynamic lease stealing would trade that reproducibility for balance; it is
//! not needed while all workers train at the same speed (they wait for each other every step).

use funnel_common::manifest::Shard;
use funnel_common::pipeline::epoch_order;

/// One lease of an epoch plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLease {
    /// Lease id, unique in the job: `(epoch << 32) | index`.
    pub id: u64,
    /// The epoch.
    pub epoch: u32,
    /// Position in the epoch's plan.
    pub index: usize,
    /// The row groups it covers.
    pub shard: Shard,
}

/// The lease id of position `index` of `epoch`'s plan.
pub fn lease_id(epoch: u32, index: usize) -> u64 {
    (u64::from(epoch) << 32) | index as u64
}

/// The plan of `epoch`: every shard once, in the (seed, epoch) permutation.
pub fn epoch_plan(shards: &[Shard], seed: u64, epoch: u32) -> Vec<PlannedLease> {
    epoch_order(shards.len(), seed, u64::from(epoch))
        .into_iter()
        .enumerate()
        .map(|(index, s)| PlannedLease {
            id: lease_id(epoch, index),
            epoch,
            index,
            shard: shards[s].clone(),
        })
        .collect()
}

/// The rank that owns lease `index` in a ring of `ranks`.
pub fn lease_owner(index: usize, ranks: usize) -> usize {
    index % ranks.max(1)
}

/// The `k`-th lease (0-based) of `rank`'s queue, if the plan of `plan_len` leases has one.
pub fn nth_lease_of(rank: usize, ranks: usize, k: usize, plan_len: usize) -> Option<usize> {
    let index = k.checked_mul(ranks.max(1))?.checked_add(rank)?;
    (index < plan_len).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(n: usize) -> Vec<Shard> {
        (0..n)
            .map(|i| Shard {
                object: i / 4,
                row_groups: (i % 4)..(i % 4) + 1,
            })
            .collect()
    }

    #[test]
    fn plans_are_deterministic_permutations_with_unique_ids() {
        let s = shards(10);
        let a = epoch_plan(&s, 7, 2);
        assert_eq!(a, epoch_plan(&s, 7, 2));
        assert_ne!(a, epoch_plan(&s, 7, 3));
        let mut seen: Vec<Shard> = a.iter().map(|l| l.shard.clone()).collect();
        seen.sort_by_key(|s| (s.object, s.row_groups.start));
        assert_eq!(seen, s);
        assert!(
            a.iter()
                .enumerate()
                .all(|(i, l)| l.index == i && l.epoch == 2)
        );
        assert_eq!(a[3].id, (2u64 << 32) | 3);
    }

    #[test]
    fn every_lease_has_exactly_one_owner_in_round_robin() {
        for ranks in 1..=5 {
            for len in [0, 1, 4, 7, 10] {
                let mut owned = vec![0; len];
                for rank in 0..ranks {
                    let mut k = 0;
                    while let Some(i) = nth_lease_of(rank, ranks, k, len) {
                        assert_eq!(lease_owner(i, ranks), rank);
                        owned[i] += 1;
                        k += 1;
                    }
                    // Queues differ in length by at most one lease.
                    assert!(k == len / ranks || k == len / ranks + 1);
                }
                assert!(owned.iter().all(|&c| c == 1), "{ranks} ranks, {len} leases");
            }
        }
    }
}
