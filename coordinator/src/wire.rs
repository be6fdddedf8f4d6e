//! Conversions between the coordinator's domain types and `funnel.v1` messages, in one place.

use funnel_common::manifest::DatasetManifest;
use funnel_proto::v1 as pb;

use crate::membership::Member;
use crate::plan::PlannedLease;

/// A dataset as the worker rebuilds it: URL, objects, and each footer as stored.
pub fn dataset(m: &DatasetManifest) -> pb::Dataset {
    pb::Dataset {
        url: m.url.clone(),
        key: m.key.clone(),
        objects: m
            .objects
            .iter()
            .map(|o| pb::DataObject {
                path: o.path.to_string(),
                size: o.size,
                etag: o.etag.clone().unwrap_or_default(),
                footer: o.footer.clone(),
            })
            .collect(),
    }
}

/// The ring of `generation` as the workers see it.
pub fn ring(members: &[Member], generation: u64) -> Vec<pb::RingMember> {
    members
        .iter()
        .map(|m| pb::RingMember {
            rank: m.rank as u32,
            worker_id: m.id.clone(),
            peer_addr: m.peer_addr.clone(),
            joining: m.joined_in == generation,
            slot: m.slot as u32,
        })
        .collect()
}

/// A lease, with the bitmap of its rows already committed (empty: none).
pub fn lease(
    l: &PlannedLease,
    m: &DatasetManifest,
    consumed: Vec<u8>,
    expires_at_ms: u64,
) -> pb::Lease {
    let object = &m.objects[l.shard.object];
    pb::Lease {
        lease_id: l.id,
        epoch: l.epoch,
        shards: vec![pb::Shard {
            object: object.path.to_string(),
            first_row_group: l.shard.row_groups.start as u32,
            row_groups: l.shard.row_groups.len() as u32,
            consumed: consumed.into(),
            object_index: l.shard.object as u32,
        }],
        expires_at_ms,
    }
}
