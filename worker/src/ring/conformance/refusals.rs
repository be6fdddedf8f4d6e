//! Refusals, over both transports where they apply: a wrong layout hash, a stale generation,
//! a wrong or missing job token. Each must fail with the error that names the cause and the
//! peer, never a hang or a panic.

use std::time::Duration;

use super::super::{Chunk, PeerId, RingError};
use super::{KINDS, Kind, TOKEN, dense, random_buffers, tag};
use crate::transport::{JobToken, PeerNode, Security};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_layout_hash_is_refused_naming_the_peer() {
    for kind in KINDS {
        let mut tags = vec![tag(1); 3];
        tags[1].layout_hash = 0xbad;
        let (outs, peers) = dense(kind, &tags, 4, 500, random_buffers(3, 30, 1)).await;
        // The first error in the ring is a layout mismatch, found by rank 1 (from rank 0) or
        // rank 2 (from rank 1), whichever looks first; the others then lose their links.
        let found = outs.iter().enumerate().any(|(r, o)| match o {
            Err(RingError::Layout {
                peer,
                got,
                expected,
            }) => *peer == peers[(r + 2) % 3] && (*got == 0xbad) != (*expected == 0xbad),
            _ => false,
        });
        assert!(found, "{kind:?}: {outs:?}");
        assert!(
            outs.iter().all(Result::is_err),
            "{kind:?}: no rank may finish"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_generation_is_refused() {
    // In memory nothing routes by generation: the ring itself refuses the chunk.
    let tags = vec![tag(5), tag(4), tag(5)];
    let (outs, peers) = dense(Kind::Memory, &tags, 4, 500, random_buffers(3, 30, 2)).await;
    // The first error is found by rank 1 (from rank 0) or rank 2 (from rank 1).
    let found = outs.iter().enumerate().any(|(r, o)| match o {
        Err(RingError::Generation {
            peer,
            got,
            expected,
        }) => *peer == peers[(r + 2) % 3] && (*got == 4) != (*expected == 4),
        _ => false,
    });
    assert!(found, "{outs:?}");
    // Over gRPC the server refuses the stream before anything reaches the ring.
    let token = Security::plain(JobToken::new(TOKEN).expect("token"));
    let node = PeerNode::start("127.0.0.1:0".parse().expect("addr"), &token)
        .await
        .expect("server");
    let me = PeerId {
        rank: 0,
        addr: node.addr().to_string(),
    };
    let (mut rx, _sparse_rx) = node.open(5, me.clone(), 4);
    let mut client = crate::transport::connect(&me, &token)
        .await
        .expect("connect");
    let mut tx =
        crate::transport::GrpcSender::<Chunk>::open(&mut client, me.clone(), me.clone(), 4)
            .await
            .expect("open");
    let chunk = Chunk {
        tag: tag(4),
        phase: crate::ring::Phase::ReduceScatter,
        round: 0,
        segment: 0,
        chunk: 0,
        offset: 0,
        values: vec![1.0].into(),
    };
    crate::ring::RingSend::send(&mut tx, chunk)
        .await
        .expect("queued");
    match tx.finish().await {
        Err(RingError::Refused { peer, status }) => {
            assert_eq!(peer, me);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(
                status.message().contains("stale generation 4"),
                "{}",
                status.message()
            );
        }
        other => panic!("got {other:?}"),
    }
    let got = tokio::time::timeout(
        Duration::from_millis(200),
        crate::ring::RingRecv::recv(&mut rx),
    )
    .await;
    assert!(
        got.is_err(),
        "nothing of a stale generation reaches the ring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_unauthenticated() {
    let token = Security::plain(JobToken::new(TOKEN).expect("token"));
    let node = PeerNode::start("127.0.0.1:0".parse().expect("addr"), &token)
        .await
        .expect("server");
    let me = PeerId {
        rank: 0,
        addr: node.addr().to_string(),
    };
    let _receivers = node.open(1, me.clone(), 4);
    let wrong = Security::plain(JobToken::new("not-the-token").expect("token"));
    let mut client = crate::transport::connect(&me, &wrong)
        .await
        .expect("connect");
    let open =
        crate::transport::GrpcSender::<Chunk>::open(&mut client, me.clone(), me.clone(), 4).await;
    match open {
        Err(RingError::Refused { peer, status }) => {
            assert_eq!(peer, me);
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("not-the-token"));
        }
        other => panic!("got {:?}", other.err()),
    }
    // No token at all: a bare generated client.
    let mut bare =
        funnel_proto::v1::peer_client::PeerClient::connect(format!("http://{}", me.addr))
            .await
            .expect("connect");
    let status = bare
        .sparse_exchange(tokio_stream::iter(
            Vec::<funnel_proto::v1::SparseBlock>::new(),
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
