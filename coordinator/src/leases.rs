//! Who reads which lease of an epoch (DESIGN §4), through failures. Pure state.
//!
//! Each worker has a slot (its rank in the first generation) and the slot's round-robin queue
//! of the plan ([`crate::plan::nth_lease_of`]), so a job without failures reads exactly as
//! before. When a worker dies, the leases it held and has not finished go to a returned queue
//! (the ledger knows which of their rows were committed), and its slot's queue is orphaned. A
//! worker whose own queue is empty takes returned leases first, then orphaned queues' leases.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::plan::nth_lease_of;

/// The leases of one epoch: handed out, held, returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBook {
    slots: usize,
    plan_len: usize,
    /// Leases of each slot's own queue handed out so far.
    served: Vec<usize>,
    /// Leases handed back by dead workers, to hand out first.
    returned: VecDeque<usize>,
    /// Leases each worker was given, by worker id.
    held: BTreeMap<String, Vec<usize>>,
    /// Slots whose worker died: their queues are served to others.
    orphaned: BTreeSet<usize>,
}

impl LeaseBook {
    /// The book of a plan of `plan_len` leases over `slots` queues, `orphaned` already dead.
    pub fn new(slots: usize, plan_len: usize, orphaned: &BTreeSet<usize>) -> Self {
        Self {
            slots: slots.max(1),
            plan_len,
            served: vec![0; slots.max(1)],
            returned: VecDeque::new(),
            held: BTreeMap::new(),
            orphaned: orphaned.clone(),
        }
    }

    fn next_of(&mut self, slot: usize) -> Option<usize> {
        let k = self.served.get_mut(slot)?;
        let index = nth_lease_of(slot, self.slots, *k, self.plan_len)?;
        *k += 1;
        Some(index)
    }

    /// The next lease (plan index) for `worker` of `slot`: its own queue, then returned leases,
    /// then orphaned queues. `None`: nothing left to hand out now.
    pub fn next(&mut self, worker: &str, slot: usize) -> Option<usize> {
        let index = self
            .next_of(slot)
            .or_else(|| self.returned.pop_front())
            .or_else(|| {
                let orphaned: Vec<usize> = self.orphaned.iter().copied().collect();
                orphaned.into_iter().find_map(|s| self.next_of(s))
            })?;
        self.held.entry(worker.to_string()).or_default().push(index);
        Some(index)
    }

    /// `worker` of `slot` died: the leases it held that are not `finished` are returned, and its
    /// queue is orphaned. Returns the returned plan indices.
    pub fn release(
        &mut self,
        worker: &str,
        slot: usize,
        finished: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        self.orphaned.insert(slot);
        let back: Vec<usize> = self
            .held
            .remove(worker)
            .unwrap_or_default()
            .into_iter()
            .filter(|&i| !finished(i))
            .collect();
        self.returned.extend(&back);
        back
    }

    /// Leases not handed out yet (own queues, orphaned queues and returned ones).
    pub fn unassigned(&self) -> usize {
        let queued: usize = (0..self.slots)
            .map(|s| {
                let mut k = self.served[s];
                let mut n = 0;
                while nth_lease_of(s, self.slots, k, self.plan_len).is_some() {
                    k += 1;
                    n += 1;
                }
                n
            })
            .sum();
        queued + self.returned.len()
    }

    /// Leases returned by dead workers and not handed out again yet.
    pub fn returned(&self) -> usize {
        self.returned.len()
    }

    /// Leases handed out to workers alive or dead (a returned lease handed out again counts
    /// again).
    pub fn handed_out(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(book: &mut LeaseBook, worker: &str, slot: usize) -> Vec<usize> {
        std::iter::from_fn(|| book.next(worker, slot)).collect()
    }

    #[test]
    fn without_failures_each_slot_reads_its_round_robin_queue() {
        let mut book = LeaseBook::new(3, 8, &BTreeSet::new());
        assert_eq!(drain(&mut book, "w0", 0), [0, 3, 6]);
        assert_eq!(drain(&mut book, "w2", 2), [2, 5]);
        assert_eq!(drain(&mut book, "w1", 1), [1, 4, 7]);
        assert_eq!(book.unassigned(), 0);
    }

    #[test]
    fn a_dead_workers_unfinished_leases_and_queue_go_to_the_survivors_once() {
        let mut book = LeaseBook::new(3, 9, &BTreeSet::new());
        assert_eq!(book.next("w1", 1), Some(1));
        assert_eq!(book.next("w1", 1), Some(4));
        // w1 finished lease 1, was reading lease 4, then died.
        assert_eq!(book.release("w1", 1, |i| i == 1), [4]);
        assert_eq!(drain(&mut book, "w0", 0), [0, 3, 6, 4, 7]);
        assert_eq!(drain(&mut book, "w2", 2), [2, 5, 8]);
        assert_eq!(book.unassigned(), 0);
        // Every lease handed out exactly once, lease 4 twice only because w1 died with it.
    }

    #[test]
    fn a_slot_dead_before_the_epoch_is_served_by_others() {
        let dead = BTreeSet::from([0]);
        let mut book = LeaseBook::new(2, 5, &dead);
        assert_eq!(book.unassigned(), 5);
        assert_eq!(drain(&mut book, "w1", 1), [1, 3, 0, 2, 4]);
    }
}
