//! Which lease a data slot reads next (DESIGN §4), and how often each lease was handed out.
//! Pure state.
//!
//! Data slot `d` of `slots` reads the plan's round-robin queue `d, d + slots, ...`
//! ([`crate::plan::nth_lease_of`]) in order, whoever serves it: the member of slot `d`, or,
//! after it died, another member (`funnel_common::slots::slot_owners`). That member asks for
//! the queue from its start and drops the rows the ledger already holds (each lease comes with
//! its committed-rows bitmap), so the slot's stream of batches, and every step's rows, are the
//! same as without the death. A lease handed out again is counted as re-read.

use std::collections::BTreeMap;

use crate::plan::nth_lease_of;

/// The leases of one epoch as the data slots ask for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBook {
    slots: usize,
    plan_len: usize,
    /// Times each plan index was handed out.
    handed: BTreeMap<usize, u32>,
}

impl LeaseBook {
    /// The book of a plan of `plan_len` leases over `slots` data slots.
    pub fn new(slots: usize, plan_len: usize) -> Self {
        Self {
            slots: slots.max(1),
            plan_len,
            handed: BTreeMap::new(),
        }
    }

    /// The plan index of the `k`-th lease of data slot `slot`, recorded as handed out; `None`
    /// past the end of the slot's queue or for a slot the job does not have.
    pub fn lease(&mut self, slot: usize, k: usize) -> Option<usize> {
        if slot >= self.slots {
            return None;
        }
        let index = nth_lease_of(slot, self.slots, k, self.plan_len)?;
        *self.handed.entry(index).or_default() += 1;
        Some(index)
    }

    /// Leases handed out at least once.
    pub fn handed_out(&self) -> usize {
        self.handed.len()
    }

    /// Leases handed out more than once (a slot read again after its reader died).
    pub fn reread(&self) -> usize {
        self.handed.values().filter(|&&n| n > 1).count()
    }

    /// Leases not handed out yet.
    pub fn unassigned(&self) -> usize {
        self.plan_len - self.handed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(book: &mut LeaseBook, slot: usize) -> Vec<usize> {
        (0..).map_while(|k| book.lease(slot, k)).collect()
    }

    #[test]
    fn each_slot_reads_its_round_robin_queue() {
        let mut book = LeaseBook::new(3, 8);
        assert_eq!(queue(&mut book, 0), [0, 3, 6]);
        assert_eq!(queue(&mut book, 2), [2, 5]);
        assert_eq!(book.unassigned(), 3);
        assert_eq!(queue(&mut book, 1), [1, 4, 7]);
        assert_eq!(
            (book.handed_out(), book.reread(), book.unassigned()),
            (8, 0, 0)
        );
        assert_eq!(book.lease(3, 0), None);
    }

    #[test]
    fn a_slot_read_again_from_its_start_counts_as_reread() {
        let mut book = LeaseBook::new(2, 5);
        assert_eq!(book.lease(1, 0), Some(1));
        assert_eq!(book.lease(1, 1), Some(3));
        // Its reader died; another member reads slot 1 from the start.
        assert_eq!(queue(&mut book, 1), [1, 3]);
        assert_eq!((book.handed_out(), book.reread()), (2, 2));
    }
}
