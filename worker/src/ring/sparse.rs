//! Exchange of row-sparse embedding gradients: every rank ends with the same summed rows, in the
//! same order.
//!
//! Method: an all-gather around the ring (each rank's block of gradients travels `n - 1` hops,
//! forwarded as soon as it arrives), then, per table, `SparseGrad::merge_all` over the `n`
//! blocks in rank order. Simple and exact: every rank merges the same inputs in the same order,
//! so all ranks are bit-identical and equal a sequential left fold in rank order. The cost is
//! that each rank receives every other rank's rows (`(n - 1)` blocks) rather than a reduced
//! share; for the few rows a batch touches that is small next to the dense buffer. A sparse
//! reduce-scatter by id range would move less for large `n`; it is not needed yet.

use funnel_common::embedding::SparseGrad;
use tokio::sync::mpsc;

use super::{PeerId, RingConfig, RingError, RingRecv, RingSend, SparseBlock, StepTag, recv_timed};

/// Sums `grads` (one per table, in table order) across the ring; returns the merged gradients.
pub async fn sparse_exchange<S, R>(
    cfg: &RingConfig,
    tag: StepTag,
    grads: &[SparseGrad],
    tx: &mut S,
    rx: &mut R,
) -> Result<Vec<SparseGrad>, RingError>
where
    S: RingSend<SparseBlock>,
    R: RingRecv<SparseBlock>,
{
    cfg.check()?;
    for (t, g) in grads.iter().enumerate() {
        if g.table != t {
            return Err(RingError::Input(format!(
                "gradient {t} is for table #{}",
                g.table
            )));
        }
        check_grad(g).map_err(RingError::Input)?;
    }
    let n = cfg.size;
    let mut blocks: Vec<Option<Vec<SparseGrad>>> = vec![None; n];
    blocks[cfg.rank] = Some(grads.to_vec());
    if n > 1 {
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<SparseBlock>();
        let _ = out_tx.send(SparseBlock {
            tag,
            round: 0,
            origin: cfg.rank as u32,
            grads: grads.to_vec(),
        });
        let sending = async {
            while let Some(block) = out_rx.recv().await {
                tx.send(block).await?;
            }
            Ok::<(), RingError>(())
        };
        let blocks = &mut blocks;
        let receiving = async move {
            for round in 0..n - 1 {
                let block = recv_timed(rx, cfg).await?;
                let origin = (cfg.rank + 2 * n - round - 1) % n;
                check_block(rx.peer(), &block, tag, round, origin, grads)?;
                if round + 1 < n - 1 {
                    let _ = out_tx.send(SparseBlock {
                        round: block.round + 1,
                        ..block.clone()
                    });
                }
                blocks[origin] = Some(block.grads);
            }
            drop(out_tx);
            Ok::<(), RingError>(())
        };
        tokio::try_join!(sending, receiving)?;
    }
    let blocks: Vec<Vec<SparseGrad>> = blocks.into_iter().flatten().collect();
    (0..grads.len())
        .map(|t| {
            let per_rank: Vec<SparseGrad> = blocks.iter().map(|b| b[t].clone()).collect();
            SparseGrad::merge_all(&per_rank).map_err(|e| RingError::Input(e.to_string()))
        })
        .collect()
}

/// Checks a block from `peer`: tag, round, origin, the same tables and dimensions as ours, ids
/// strictly increasing, `ids.len() x dim` finite values.
fn check_block(
    peer: &PeerId,
    block: &SparseBlock,
    tag: StepTag,
    round: usize,
    origin: usize,
    ours: &[SparseGrad],
) -> Result<(), RingError> {
    super::check_tag(peer, block.tag, tag)?;
    if (block.round as usize, block.origin as usize) != (round, origin) {
        return Err(RingError::invalid(
            peer,
            format!(
                "sparse block (round, origin) = ({}, {}), expected ({round}, {origin})",
                block.round, block.origin
            ),
        ));
    }
    if block.grads.len() != ours.len() {
        return Err(RingError::invalid(
            peer,
            format!(
                "sparse block of rank {origin} has {} tables, expected {}",
                block.grads.len(),
                ours.len()
            ),
        ));
    }
    for (g, mine) in block.grads.iter().zip(ours) {
        if (g.table, g.dim) != (mine.table, mine.dim) {
            return Err(RingError::invalid(
                peer,
                format!(
                    "sparse block of rank {origin}: table #{} of dim {}, expected #{} of dim {}",
                    g.table, g.dim, mine.table, mine.dim
                ),
            ));
        }
        check_grad(g)
            .map_err(|e| RingError::invalid(peer, format!("sparse block of rank {origin}: {e}")))?;
    }
    Ok(())
}

/// The invariants `SparseGrad::new` checks (dimension, `ids.len() x dim` values, ids strictly
/// increasing) without copying the rows, plus finite values.
fn check_grad(g: &SparseGrad) -> Result<(), String> {
    if g.dim == 0 || g.ids.len().checked_mul(g.dim) != Some(g.rows.len()) {
        return Err(format!(
            "table #{}: {} ids of dim {} but {} values",
            g.table,
            g.ids.len(),
            g.dim,
            g.rows.len()
        ));
    }
    if let Some(w) = g.ids.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "table #{}: ids not strictly increasing ({} then {})",
            g.table, w[0], w[1]
        ));
    }
    if let Some(k) = g.rows.iter().position(|v| !v.is_finite()) {
        return Err(format!("table #{}: value {k} is not finite", g.table));
    }
    Ok(())
}
