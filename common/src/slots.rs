//! Who reads which data slot of an epoch (DESIGN §4, §6). An epoch's plan is cut into
//! `cluster.workers` data slots; slot `d` reads the plan's leases `d, d + workers, ...` in
//! that order through one shuffle buffer seeded by (epoch, d), and gives each step
//! `batch_size / workers` rows. A step's global batch is the next batch of every slot, so the
//! rows of each step, and hence the model, do not depend on which processes are alive: after a
//! death, the dead member's slot is read by another member (from the epoch's start, dropping
//! the rows already committed), and a replacement that joins takes it over.

/// For each data slot `0..slots`, the rank that reads it in a ring of `members`, given as
/// `(rank, member slot)`: a member reads its own slot; the slots of dead members go first to
/// members that joined later (member slot >= `slots`, in join order), one each, then round-robin
/// over all members by rank. Empty when there are no members.
pub fn slot_owners(slots: usize, members: &[(usize, usize)]) -> Vec<usize> {
    if members.is_empty() {
        return Vec::new();
    }
    let mut owner: Vec<Option<usize>> = vec![None; slots];
    for &(rank, slot) in members {
        if slot < slots {
            owner[slot] = Some(rank);
        }
    }
    let mut orphans = (0..slots)
        .filter(|&d| owner[d].is_none())
        .collect::<Vec<_>>()
        .into_iter();
    let mut joined: Vec<(usize, usize)> = members
        .iter()
        .filter(|(_, s)| *s >= slots)
        .map(|&(rank, slot)| (slot, rank))
        .collect();
    joined.sort_unstable();
    for (_, rank) in joined {
        match orphans.next() {
            Some(d) => owner[d] = Some(rank),
            None => break,
        }
    }
    let mut ranks: Vec<usize> = members.iter().map(|(r, _)| *r).collect();
    ranks.sort_unstable();
    for (i, d) in orphans.enumerate() {
        owner[d] = Some(ranks[i % ranks.len()]);
    }
    owner.into_iter().map(|o| o.unwrap_or(ranks[0])).collect()
}

/// The data slots `rank` reads, in increasing order.
pub fn slots_of(rank: usize, slots: usize, members: &[(usize, usize)]) -> Vec<usize> {
    slot_owners(slots, members)
        .into_iter()
        .enumerate()
        .filter(|(_, r)| *r == rank)
        .map(|(d, _)| d)
        .collect()
}

/// Rows per step of data slot `slot` when `slots` slots share a global batch of `global` rows:
/// the first `global % slots` slots take one row more.
pub fn slot_batch_size(global: usize, slots: usize, slot: usize) -> usize {
    let slots = slots.max(1);
    global / slots + usize::from(slot < global % slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_failures_each_member_reads_its_own_slot() {
        let members = [(0, 0), (1, 1), (2, 2), (3, 3)];
        assert_eq!(slot_owners(4, &members), [0, 1, 2, 3]);
        assert_eq!(slots_of(2, 4, &members), [2]);
    }

    #[test]
    fn a_dead_members_slot_goes_round_robin_then_to_a_joiner() {
        // Member of slot 1 died: ranks re-formed 0, 1, 2 over slots 0, 2, 3.
        let survivors = [(0, 0), (1, 2), (2, 3)];
        assert_eq!(slot_owners(4, &survivors), [0, 0, 1, 2]);
        // Two died (slots 0 and 2): rank 0 takes slot 0, rank 1 slot 2.
        assert_eq!(slot_owners(4, &[(0, 1), (1, 3)]), [0, 0, 1, 1]);
        // A replacement (member slot 4) joins: it takes the orphan.
        let joined = [(0, 0), (1, 2), (2, 3), (3, 4)];
        assert_eq!(slot_owners(4, &joined), [0, 3, 1, 2]);
        assert_eq!(slots_of(3, 4, &joined), [1]);
    }

    #[test]
    fn every_slot_has_exactly_one_reader_among_the_members() {
        for slots in 1..=5 {
            for alive in 1..=slots {
                let members: Vec<(usize, usize)> = (0..alive).map(|r| (r, slots - 1 - r)).collect();
                let owners = slot_owners(slots, &members);
                assert_eq!(owners.len(), slots);
                assert!(owners.iter().all(|r| *r < alive));
                let total: usize = (0..alive).map(|r| slots_of(r, slots, &members).len()).sum();
                assert_eq!(total, slots);
            }
        }
        assert!(slot_owners(3, &[]).is_empty());
    }

    #[test]
    fn slots_share_the_global_batch_exactly() {
        for global in [1, 7, 64, 1000] {
            for slots in 1..=5 {
                let sizes: Vec<usize> = (0..slots)
                    .map(|s| slot_batch_size(global, slots, s))
                    .collect();
                assert_eq!(sizes.iter().sum::<usize>(), global);
            }
        }
    }
}
