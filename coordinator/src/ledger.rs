//! The ledger (DESIGN §4): rows of a lease count as consumed only when the step that used them
//! is committed. It records the exact rows, not a count: batches draw from a shuffle window, so
//! the consumed rows of a lease are not a prefix, and a lease handed back by a dead worker must
//! resume without exactly those rows. A row committed twice is refused, so the ledger itself
//! enforces exactly-once.

use std::collections::BTreeMap;

/// The committed rows of one lease: a bitmap over its row group's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSet {
    words: Vec<u64>,
    rows: u64,
    count: u64,
}

impl RowSet {
    /// No rows of a lease of `rows` rows.
    pub fn new(rows: u64) -> Self {
        Self {
            words: vec![0; rows.div_ceil(64) as usize],
            rows,
            count: 0,
        }
    }

    /// Whether `row` is in the set.
    pub fn contains(&self, row: u32) -> bool {
        let r = u64::from(row);
        r < self.rows && self.words[(r / 64) as usize] >> (r % 64) & 1 == 1
    }

    fn insert(&mut self, row: u32) {
        let r = u64::from(row);
        self.words[(r / 64) as usize] |= 1 << (r % 64);
        self.count += 1;
    }

    /// Rows in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether every row of the lease is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.rows
    }

    /// The bitmap as little-endian u64 words (the wire form of `Shard.consumed`).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
}

/// Rows one worker reports for one lease in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRows {
    /// The lease.
    pub lease: u64,
    /// Rows in the lease's row group.
    pub lease_rows: u64,
    /// Row indices within the row group.
    pub rows: Vec<u32>,
}

/// A report the ledger cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// A row index past the end of the lease's row group.
    #[error("lease {lease:#x}: row {row} of a row group of {rows} rows")]
    OutOfRange {
        /// The lease.
        lease: u64,
        /// The row.
        row: u32,
        /// Rows in the row group.
        rows: u64,
    },
    /// A row committed by an earlier step, or reported twice for this one.
    #[error("lease {lease:#x}: row {row} already counted (exactly-once would break)")]
    Twice {
        /// The lease.
        lease: u64,
        /// The row.
        row: u32,
    },
}

/// Committed rows per lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    leases: BTreeMap<u64, RowSet>,
    committed_step: Option<u64>,
}

impl Ledger {
    /// Checks `reports` (all workers' rows of one step) against the committed rows and each
    /// other, without changing anything.
    pub fn check(&self, reports: &[LeaseRows]) -> Result<(), LedgerError> {
        let mut fresh: BTreeMap<u64, RowSet> = BTreeMap::new();
        for r in reports {
            let mine = fresh
                .entry(r.lease)
                .or_insert_with(|| RowSet::new(r.lease_rows));
            let committed = self.leases.get(&r.lease);
            for &row in &r.rows {
                if u64::from(row) >= r.lease_rows {
                    return Err(LedgerError::OutOfRange {
                        lease: r.lease,
                        row,
                        rows: r.lease_rows,
                    });
                }
                if mine.contains(row) || committed.is_some_and(|c| c.contains(row)) {
                    return Err(LedgerError::Twice {
                        lease: r.lease,
                        row,
                    });
                }
                mine.insert(row);
            }
        }
        Ok(())
    }

    /// Records the rows of committed `step`, all or nothing. A step without rows (the one that
    /// ends an epoch) is not a training step and leaves the committed step as it was.
    pub fn commit(&mut self, step: u64, reports: &[LeaseRows]) -> Result<(), LedgerError> {
        self.check(reports)?;
        if reports.is_empty() {
            return Ok(());
        }
        for r in reports {
            let set = self
                .leases
                .entry(r.lease)
                .or_insert_with(|| RowSet::new(r.lease_rows));
            for &row in &r.rows {
                set.insert(row);
            }
        }
        self.committed_step = Some(self.committed_step.map_or(step, |s| s.max(step)));
        Ok(())
    }

    /// Rows of `lease` consumed by committed steps.
    pub fn cursor(&self, lease: u64) -> u64 {
        self.leases.get(&lease).map_or(0, RowSet::count)
    }

    /// The committed rows of `lease`, if any.
    pub fn consumed(&self, lease: u64) -> Option<&RowSet> {
        self.leases.get(&lease)
    }

    /// The last committed step.
    pub fn committed_step(&self) -> Option<u64> {
        self.committed_step
    }

    /// Rows consumed by committed steps over the leases of `epoch` (ids `(epoch << 32) | i`).
    pub fn epoch_rows(&self, epoch: u32) -> u64 {
        let lo = u64::from(epoch) << 32;
        self.leases
            .range(lo..lo + (1 << 32))
            .map(|(_, r)| r.count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lease: u64, n: u64, rows: &[u32]) -> LeaseRows {
        LeaseRows {
            lease,
            lease_rows: n,
            rows: rows.to_vec(),
        }
    }

    #[test]
    fn committed_rows_are_counted_per_lease_and_epoch() {
        let mut l = Ledger::default();
        l.commit(1, &[rows(0, 100, &[5, 70, 3]), rows(1, 10, &[0])])
            .expect("commits");
        l.commit(2, &[rows(0, 100, &[4])]).expect("commits");
        assert_eq!((l.cursor(0), l.cursor(1), l.cursor(9)), (4, 1, 0));
        l.commit(3, &[rows(1u64 << 32, 2, &[0, 1])])
            .expect("commits");
        assert_eq!((l.epoch_rows(0), l.epoch_rows(1)), (5, 2));
        assert!(l.consumed(1u64 << 32).is_some_and(RowSet::is_full));
        assert_eq!(l.committed_step(), Some(3));
        let set = l.consumed(0).expect("lease 0");
        assert!(set.contains(70) && set.contains(3) && !set.contains(6) && !set.contains(900));
        // Word 0 holds rows 3, 4, 5; word 1 holds row 70 (bit 6).
        let bytes = set.to_le_bytes();
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes[0], 0b0011_1000);
        assert_eq!(bytes[8], 0b0100_0000);
    }

    #[test]
    fn a_row_twice_or_out_of_range_is_refused_and_changes_nothing() {
        let mut l = Ledger::default();
        l.commit(1, &[rows(7, 4, &[1])]).expect("commits");
        let before = l.clone();
        assert_eq!(
            l.commit(2, &[rows(7, 4, &[2]), rows(8, 4, &[0]), rows(7, 4, &[1])]),
            Err(LedgerError::Twice { lease: 7, row: 1 })
        );
        assert_eq!(
            l.commit(2, &[rows(8, 4, &[0, 0])]),
            Err(LedgerError::Twice { lease: 8, row: 0 })
        );
        assert_eq!(
            l.commit(2, &[rows(8, 4, &[4])]),
            Err(LedgerError::OutOfRange {
                lease: 8,
                row: 4,
                rows: 4
            })
        );
        assert_eq!(l, before);
    }
}
