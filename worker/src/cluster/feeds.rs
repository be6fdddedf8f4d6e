//! The data slots this worker reads in the current generation, and the input of each step:
//! the next batch of every slot it serves, concatenated in slot order. See
//! `funnel_common::slots` for why a step's rows depend on the slots, not on who is alive.
//!
//! A step that is not committed is redone with the same rows: its per-slot parts go back
//! ([`SlotFeeds::put_back`]) and are used again, except those of slots another member serves in
//! the new generation (that member's reader produces the same rows from the ledger).

use std::collections::BTreeMap;

use funnel_common::batch::Batch;
use funnel_common::decode::DecodeStats;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::leases::{SlotItem, SlotReader};
use crate::WorkerError;

/// A batch and the lease of each row.
pub type Input = (Batch, Vec<u64>);

/// A step's input: the rows of every slot served, and the parts per slot.
#[derive(Debug)]
pub struct StepInput {
    /// The rows, slots in increasing order.
    pub batch: Batch,
    /// The lease of each row.
    pub leases: Vec<u64>,
    /// The parts per slot, kept to redo the step.
    pub parts: Vec<(usize, Input)>,
}

/// One slot's reader: its receiver, or the end it reached.
#[derive(Debug)]
enum Feed {
    Reading(mpsc::Receiver<SlotItem>),
    Ended,
}

/// The slots served and their readers, for one epoch.
#[derive(Debug)]
pub struct SlotFeeds {
    epoch: u32,
    template: SlotReader,
    feeds: BTreeMap<usize, Feed>,
    carry: BTreeMap<usize, Input>,
    /// Decode statistics of the readers that ended.
    pub decode: DecodeStats,
}

impl SlotFeeds {
    /// No slot served yet; `template` gives every reader's settings (its `slot` is replaced).
    pub fn new(epoch: u32, template: SlotReader) -> Self {
        Self {
            epoch,
            template,
            feeds: BTreeMap::new(),
            carry: BTreeMap::new(),
            decode: DecodeStats::default(),
        }
    }

    /// Serves exactly `slots` from now on: readers of other slots stop (dropping their
    /// receivers), and their rows kept for a redo are dropped; new slots start reading from
    /// the start of their queue, on `runtime`.
    pub fn serve(&mut self, slots: &[usize], runtime: &Handle) {
        self.feeds.retain(|s, _| slots.contains(s));
        self.carry.retain(|s, _| slots.contains(s));
        let _guard = runtime.enter();
        for &slot in slots {
            self.feeds.entry(slot).or_insert_with(|| {
                let mut reader = self.template.clone();
                reader.slot = slot;
                Feed::Reading(reader.spawn(self.epoch))
            });
        }
    }

    /// The slots served.
    pub fn slots(&self) -> Vec<usize> {
        self.feeds.keys().copied().collect()
    }

    /// The next step's input: for each slot served, the rows kept from an uncommitted step or
    /// the reader's next batch. `None` when every served slot has ended.
    pub fn next_input(&mut self) -> Result<Option<StepInput>, WorkerError> {
        let mut parts: Vec<(usize, Input)> = Vec::new();
        for (&slot, feed) in &mut self.feeds {
            if let Some(kept) = self.carry.remove(&slot) {
                parts.push((slot, kept));
                continue;
            }
            let Feed::Reading(rx) = feed else { continue };
            match rx.blocking_recv() {
                Some(SlotItem::Batch(b, leases)) => parts.push((slot, (b, leases))),
                Some(SlotItem::End(stats)) => {
                    self.decode.merge(&stats);
                    *feed = Feed::Ended;
                }
                Some(SlotItem::Failed(e)) => return Err(e),
                None => {
                    return Err(WorkerError::Internal(format!(
                        "the reader of data slot {slot} stopped"
                    )));
                }
            }
        }
        let Some(((_, (first, first_leases)), rest)) = parts.split_first() else {
            return Ok(None);
        };
        let mut batch = first.clone();
        let mut leases = first_leases.clone();
        for (_, (b, l)) in rest {
            batch.append(b);
            leases.extend_from_slice(l);
        }
        Ok(Some(StepInput {
            batch,
            leases,
            parts,
        }))
    }

    /// Keeps the parts of an uncommitted step for the redo.
    pub fn put_back(&mut self, input: StepInput) {
        for (slot, part) in input.parts {
            self.carry.insert(slot, part);
        }
    }
}
