//! The one place where generated `funnel.v1` messages and the ring's domain types meet, and where
//! ring errors become gRPC statuses.
//!
//! Decoding checks only what the wire format itself can get wrong (a missing header, an unknown
//! phase, a number that does not fit); the protocol checks (generation, step, layout hash,
//! indices, sizes, finite values) are the ring algorithm's, the same for every transport.

use bytes::{BufMut, Bytes, BytesMut};
use funnel_common::embedding::SparseGrad;
use funnel_proto::v1 as pb;
use tonic::{Code, Status};

use crate::ring::{Chunk, F32Bytes, PeerId, Phase, RingError, SparseBlock, StepTag};

/// The header of every message this rank sends.
pub(crate) fn header(tag: StepTag, me: &PeerId) -> pb::StreamHeader {
    pb::StreamHeader {
        generation: tag.generation,
        step: tag.step,
        layout_hash: tag.layout_hash,
        sender_rank: me.rank as u32,
        sender_addr: me.addr.clone(),
    }
}

fn tag_of(h: &pb::StreamHeader) -> StepTag {
    StepTag {
        generation: h.generation,
        step: h.step,
        layout_hash: h.layout_hash,
    }
}

/// A chunk as sent by `me`.
pub(crate) fn chunk_to_wire(c: Chunk, me: &PeerId) -> pb::AllReduceChunk {
    pb::AllReduceChunk {
        header: Some(header(c.tag, me)),
        phase: match c.phase {
            Phase::ReduceScatter => pb::Phase::ReduceScatter,
            Phase::AllGather => pb::Phase::AllGather,
        } as i32,
        round: c.round,
        segment: c.segment,
        chunk: c.chunk,
        offset: c.offset,
        values: c.values.bytes().clone(),
    }
}

/// `values` as little-endian bytes (one copy).
fn f32_bytes(values: &[f32]) -> Bytes {
    F32Bytes::from_f32(values).into_bytes()
}

fn u32_bytes(values: &[u32]) -> Bytes {
    let mut b = BytesMut::with_capacity(values.len() * 4);
    for v in values {
        b.put_u32_le(*v);
    }
    b.freeze()
}

/// Little-endian f32 values from `peer`; a length that is not a multiple of 4 is refused.
pub(crate) fn f32s(b: &[u8], what: &str, peer: &PeerId) -> Result<Vec<f32>, RingError> {
    if !b.len().is_multiple_of(4) {
        return Err(RingError::invalid(
            peer,
            format!(
                "{what}: {} bytes is not a whole number of f32 values",
                b.len()
            ),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn u32s(b: &[u8], what: &str, peer: &PeerId) -> Result<Vec<u32>, RingError> {
    if !b.len().is_multiple_of(4) {
        return Err(RingError::invalid(
            peer,
            format!("{what}: {} bytes is not a whole number of u32 ids", b.len()),
        ));
    }
    Ok(b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A chunk received from `peer`.
pub(crate) fn chunk_from_wire(m: pb::AllReduceChunk, peer: &PeerId) -> Result<Chunk, RingError> {
    let h = m
        .header
        .as_ref()
        .ok_or_else(|| RingError::invalid(peer, "chunk without a header"))?;
    let phase = match pb::Phase::try_from(m.phase) {
        Ok(pb::Phase::ReduceScatter) => Phase::ReduceScatter,
        Ok(pb::Phase::AllGather) => Phase::AllGather,
        _ => return Err(RingError::invalid(peer, format!("phase {}", m.phase))),
    };
    Ok(Chunk {
        tag: tag_of(h),
        phase,
        round: m.round,
        segment: m.segment,
        chunk: m.chunk,
        offset: m.offset,
        values: F32Bytes::from_bytes(m.values).map_err(|len| {
            RingError::invalid(
                peer,
                format!("chunk values: {len} bytes is not a whole number of f32 values"),
            )
        })?,
    })
}

/// A sparse block as sent by `me`.
pub(crate) fn block_to_wire(b: SparseBlock, me: &PeerId) -> pb::SparseBlock {
    pb::SparseBlock {
        header: Some(header(b.tag, me)),
        round: b.round,
        origin_rank: b.origin,
        tables: b
            .grads
            .into_iter()
            .map(|g| pb::SparseTableGrad {
                table: g.table as u32,
                dim: g.dim as u32,
                ids: u32_bytes(&g.ids),
                rows: f32_bytes(&g.rows),
            })
            .collect(),
    }
}

/// A sparse block received from `peer`. The gradients' invariants are checked by the ring
/// (`SparseGrad` fields are public, so this builds them unchecked and lets one check run).
pub(crate) fn block_from_wire(m: pb::SparseBlock, peer: &PeerId) -> Result<SparseBlock, RingError> {
    let h = m
        .header
        .as_ref()
        .ok_or_else(|| RingError::invalid(peer, "sparse block without a header"))?;
    let grads = m
        .tables
        .into_iter()
        .map(|t| {
            Ok(SparseGrad {
                table: t.table as usize,
                dim: t.dim as usize,
                ids: u32s(&t.ids, "sparse ids", peer)?,
                rows: f32s(&t.rows, "sparse rows", peer)?,
            })
        })
        .collect::<Result<Vec<_>, RingError>>()?;
    Ok(SparseBlock {
        tag: tag_of(h),
        round: m.round,
        origin: m.origin_rank,
        grads,
    })
}

/// The gRPC status a ring error is reported with to the peer that caused it.
impl From<&RingError> for Status {
    fn from(e: &RingError) -> Status {
        let code = match e {
            RingError::Generation { .. } | RingError::Layout { .. } => Code::FailedPrecondition,
            RingError::Invalid { .. } => Code::InvalidArgument,
            RingError::Link { .. } => Code::Unavailable,
            RingError::Config(_) | RingError::Input(_) => Code::Internal,
            RingError::Refused { status, .. } => status.code(),
        };
        Status::new(code, e.to_string())
    }
}

/// A status returned by `peer` (a refusal), as a ring error.
pub(crate) fn refused(peer: &PeerId, status: Status) -> RingError {
    RingError::Refused {
        peer: peer.clone(),
        status: Box::new(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId {
            rank: 3,
            addr: "127.0.0.1:9".into(),
        }
    }

    #[test]
    fn chunks_and_blocks_round_trip() {
        let tag = StepTag {
            generation: 2,
            step: 7,
            layout_hash: u64::MAX - 1,
        };
        let c = Chunk {
            tag,
            phase: Phase::AllGather,
            round: 1,
            segment: 2,
            chunk: 3,
            offset: 40,
            values: vec![1.5, -0.0, 3.25].into(),
        };
        let back = chunk_from_wire(chunk_to_wire(c.clone(), &peer()), &peer()).expect("valid");
        assert_eq!(back, c);
        let b = SparseBlock {
            tag,
            round: 0,
            origin: 1,
            grads: vec![SparseGrad::new(0, 2, vec![1, 5], vec![1.0, 2.0, 3.0, 4.0]).expect("ok")],
        };
        let back = block_from_wire(block_to_wire(b.clone(), &peer()), &peer()).expect("valid");
        assert_eq!(back, b);
    }

    #[test]
    fn malformed_messages_name_the_peer() {
        let mut m = chunk_to_wire(
            Chunk {
                tag: StepTag {
                    generation: 0,
                    step: 0,
                    layout_hash: 0,
                },
                phase: Phase::ReduceScatter,
                round: 0,
                segment: 0,
                chunk: 0,
                offset: 0,
                values: F32Bytes::default(),
            },
            &peer(),
        );
        m.values = Bytes::from_static(&[0, 0, 128]);
        let e = chunk_from_wire(m.clone(), &peer()).expect_err("3 bytes");
        assert!(e.to_string().contains("whole number of f32"), "{e}");
        m.values = Bytes::new();
        m.phase = 9;
        let e = chunk_from_wire(m.clone(), &peer()).expect_err("bad phase");
        assert!(e.to_string().contains("rank 3 at 127.0.0.1:9"), "{e}");
        m.header = None;
        assert!(chunk_from_wire(m, &peer()).is_err());
        let status = Status::from(&e);
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
