//! The ledger (DESIGN §4): rows of a lease count as consumed only when the step that used them
//! is committed. Cursors are absolute (rows of the lease consumed so far) and only move forward,
//! so a repeated report cannot count rows twice. Issue 6 hands a dead worker's lease to a
//! survivor from its committed cursor.

use std::collections::BTreeMap;

/// Committed cursors per lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    cursors: BTreeMap<u64, u64>,
    committed_step: Option<u64>,
}

impl Ledger {
    /// Records the cursors reported with committed `step`.
    pub fn commit(&mut self, step: u64, cursors: impl IntoIterator<Item = (u64, u64)>) {
        for (lease, rows) in cursors {
            let c = self.cursors.entry(lease).or_default();
            *c = (*c).max(rows);
        }
        self.committed_step = Some(self.committed_step.map_or(step, |s| s.max(step)));
    }

    /// Rows of `lease` consumed by committed steps.
    pub fn cursor(&self, lease: u64) -> u64 {
        self.cursors.get(&lease).copied().unwrap_or(0)
    }

    /// The last committed step.
    pub fn committed_step(&self) -> Option<u64> {
        self.committed_step
    }

    /// Rows consumed by committed steps over the leases of `epoch` (ids `(epoch << 32) | i`).
    pub fn epoch_rows(&self, epoch: u32) -> u64 {
        let lo = u64::from(epoch) << 32;
        self.cursors.range(lo..lo + (1 << 32)).map(|(_, r)| r).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_only_move_forward_and_sum_per_epoch() {
        let mut l = Ledger::default();
        l.commit(1, [(0, 64), (1, 64)]);
        l.commit(2, [(0, 128), (1, 32)]);
        assert_eq!((l.cursor(0), l.cursor(1), l.cursor(9)), (128, 64, 0));
        l.commit(3, [(1u64 << 32, 10)]);
        assert_eq!((l.epoch_rows(0), l.epoch_rows(1)), (192, 10));
        assert_eq!(l.committed_step(), Some(3));
    }
}
