//! Refusals, over every transport where they apply: a wrong layout hash, a stale generation,
//! a wrong or missing job token. Each must fail with the error that names the cause and the
//! peer, never a hang or a panic.

use std::time::Duration;

use tokio::task::block_in_place;

use super::super::{Chunk, PeerId, RingError, SparseBlock};
use super::{KINDS, Kind, TOKEN, dense, random_buffers, tag};
use crate::transport::tcp::direct::DirectLinks;
use crate::transport::{Client, GrpcSender, JobToken, PeerNode, Security, TcpSender};

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
    let (node, me, token) = node().await;
    let (mut rx, _sparse_rx, _links) = node.open(5, me.clone(), 4);
    let (mut tx, _client) = sender(&me, &token).await.expect("open");
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
    assert_stale(tx.finish().await, &me, "grpc");
    let got = tokio::time::timeout(
        Duration::from_millis(200),
        crate::ring::RingRecv::recv(&mut rx),
    )
    .await;
    assert!(
        got.is_err(),
        "nothing of a stale generation reaches the ring"
    );
    // Over raw TCP the server refuses the link, routed by its handshake, before the ring
    // takes it; the sending rank's all-reduce reports the refusal.
    let (_rx, _sparse_rx, incoming) = node.open(5, me.clone(), 4);
    let (_keep, nothing) = std::sync::mpsc::channel();
    let direct = DirectLinks::open(me.clone(), me.clone(), me.clone(), &token.token, 4, nothing)
        .await
        .expect("handshake");
    let cfg = super::config(0, 2, 64, 2000);
    let mut buf = vec![1.0; 30];
    let out = block_in_place(|| direct.all_reduce(&cfg, tag(4), &mut buf, None, &|| false));
    assert_stale(out, &me, "tcp");
    assert!(
        incoming.recv_timeout(Duration::from_millis(200)).is_err(),
        "a stale link never reaches the ring"
    );
}

/// `out` is `peer`'s refusal of generation 4 as stale.
fn assert_stale(out: Result<(), RingError>, peer: &PeerId, transport: &str) {
    match out {
        Err(RingError::Refused { peer: p, status }) => {
            assert_eq!(&p, peer);
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(
                status.message().contains("stale generation 4"),
                "{transport}: {}",
                status.message()
            );
        }
        other => panic!("{transport}: got {other:?}"),
    }
}

/// A peer server with the conformance token, and itself as rank 0.
async fn node() -> (PeerNode, PeerId, Security) {
    let token = Security::plain(JobToken::new(TOKEN).expect("token"));
    let node = PeerNode::start("127.0.0.1:0".parse().expect("addr"), &token)
        .await
        .expect("server");
    let me = PeerId {
        rank: 0,
        addr: node.addr().to_string(),
    };
    (node, me, token)
}

/// A gRPC sender of chunks from `me` to itself (and the connection to keep).
async fn sender(
    me: &PeerId,
    security: &Security,
) -> Result<(GrpcSender<Chunk>, Client), RingError> {
    let mut client = crate::transport::connect(me, security).await?;
    let tx = GrpcSender::open(&mut client, me.clone(), me.clone(), 4).await?;
    Ok((tx, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_unauthenticated() {
    let (node, me, _token) = node().await;
    let _receivers = node.open(1, me.clone(), 4);
    let wrong = Security::plain(JobToken::new("not-the-token").expect("token"));
    let (_keep, nothing) = std::sync::mpsc::channel();
    let (m, t) = (me.clone(), &wrong.token);
    let outs = [
        ("grpc", sender(&me, &wrong).await.map(drop)),
        (
            "tcp chunks",
            DirectLinks::open(m.clone(), m.clone(), m.clone(), t, 1, nothing)
                .await
                .map(drop),
        ),
        (
            "tcp sparse",
            TcpSender::<SparseBlock>::open(m.clone(), m, t, 1)
                .await
                .map(drop),
        ),
    ];
    for (transport, out) in outs {
        match out {
            Err(RingError::Refused { peer, status }) => {
                assert_eq!(peer, me);
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{transport}");
                assert!(!status.message().contains("not-the-token"));
            }
            other => panic!("{transport}: got {:?}", other.err()),
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_oversized_tcp_frames_break_the_link_not_the_rank() {
    use crate::transport::tcp::frame;
    use tokio::io::AsyncWriteExt;

    // Rank 1 of a 2-rank ring over raw TCP; rank 0 is this test, writing by hand: a good
    // first chunk (segment 0, reduce-scatter round 0), then a bad frame.
    let ring = HandRing::start().await;
    let (node0, rank0, token) = (&ring.node0, ring.rank0.clone(), &ring.token);
    let good = Chunk {
        tag: tag(1),
        phase: crate::ring::Phase::ReduceScatter,
        round: 0,
        segment: 0,
        chunk: 0,
        offset: 0,
        values: vec![2.5, -1.0].into(),
    };
    let mut meta = crate::transport::wire::chunk_to_wire(good.clone(), &rank0);
    let payload = std::mem::take(&mut meta.values);
    let meta = prost::Message::encode_to_vec(&meta);
    let bad_frames: [(Vec<u8>, &str); 2] = [
        (
            [&frame::frame_header(4, 0)[..], &[0xff; 4]].concat(),
            "malformed frame",
        ),
        (
            frame::frame_header(u32::MAX as usize, 0).to_vec(),
            "at most",
        ),
    ];
    for (bad, why) in bad_frames {
        let (direct, mut link, _open) = ring.rank1().await;
        let mut bytes = frame::frame_header(meta.len(), payload.len()).to_vec();
        bytes.extend_from_slice(&meta);
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&bad);
        link.write_all(&bytes).await.expect("frames");
        let cfg = super::config(1, 2, 64, 2000);
        let mut buf = vec![1.0; 4];
        let out = block_in_place(|| direct.all_reduce(&cfg, tag(1), &mut buf, None, &|| false));
        match out {
            Err(RingError::Invalid { peer, what }) => {
                assert_eq!(peer, rank0);
                assert!(what.contains(why), "{what}");
            }
            other => panic!("{why}: got {other:?}"),
        }
        // The good chunk was summed in before the bad frame came.
        assert_eq!(&buf[..2], &[3.5, 0.0]);
    }
    // A connection that starts like a raw link but is not one is dropped; gRPC still serves.
    let mut junk = tokio::net::TcpStream::connect(node0.addr())
        .await
        .expect("connect");
    junk.write_all(b"FUNNEL-JUNK/9\n\x01\x00\x00")
        .await
        .expect("junk");
    let (code, text) = frame::read_verdict(&mut junk).await.expect("verdict");
    assert_eq!(code, tonic::Code::InvalidArgument, "{text}");
    let (mut tx, _client) = sender(&rank0, token).await.expect("gRPC on the same port");
    let (mut rx, _sparse_rx, _links) = node0.open(1, rank0.clone(), 4);
    crate::ring::RingSend::send(&mut tx, good.clone())
        .await
        .expect("sent");
    let got = crate::ring::RingRecv::recv(&mut rx)
        .await
        .expect("received");
    assert_eq!(got, good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_value_that_is_not_finite_is_refused_as_local() {
    // Rank 1 of 3 with 30 values: its own segment is 10..20 (checked before any of it is
    // sent; over raw TCP chunk by chunk, so 10..14 goes out before 14 fails), segment 0 is
    // added into in reduce-scatter round 0 (checked as it is added).
    for kind in KINDS {
        for (at, bad) in [(14, f32::NAN), (3, f32::INFINITY)] {
            let mut inputs = random_buffers(3, 30, 3);
            inputs[1][at] = bad;
            let (outs, _) = dense(kind, &[tag(1); 3], 4, 500, inputs).await;
            match &outs[1] {
                Err(RingError::Input(what)) => {
                    assert!(what.contains(&format!("local value {at} of 30")), "{what}")
                }
                other => panic!("{kind:?} at {at}: {other:?}"),
            }
            // Nobody finishes a step one rank dropped, and nobody blames rank 1's neighbours.
            for (r, out) in outs.iter().enumerate() {
                assert!(
                    !matches!(out, Ok(_) | Err(RingError::Invalid { .. })),
                    "{kind:?} at {at}: rank {r}: {out:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_tcp_step_returns_though_both_its_links_are_stuck() {
    // Rank 1 of 2 over raw TCP; rank 0 is a node that accepts rank 1's link and never reads
    // it, and a hand-made link that never sends. 64 MiB leaves rank 1's sender blocked on a
    // full link and its receiver waiting on a silent one; cancelling the step (a newer
    // generation) must end both, long before the receive timeout.
    let ring = HandRing::start().await;
    let (direct, _silent, _open) = ring.rank1().await;
    let cfg = super::config(1, 2, 1 << 18, 600_000);
    let mut buf = vec![1.0f32; 16 << 20];
    // Asked every 100 ms while a thread waits: the second time, the ring has moved on.
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let cancelled = || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 1;
    let out = block_in_place(|| direct.all_reduce(&cfg, tag(1), &mut buf, None, &cancelled));
    match out {
        Err(RingError::Link { peer, what }) => {
            assert_eq!(peer, ring.rank0);
            assert!(what.contains("cancelled"), "{what}");
        }
        other => panic!("got {other:?}"),
    }
    // The links are shut: the next step fails at once instead of waiting.
    let again = block_in_place(|| direct.all_reduce(&cfg, tag(1), &mut buf, None, &|| false));
    assert!(again.is_err(), "{again:?}");
}

/// Two peer servers: rank 0's, whose side of the ring a test plays by hand, and rank 1's.
struct HandRing {
    node0: PeerNode,
    node1: PeerNode,
    rank0: PeerId,
    rank1: PeerId,
    token: Security,
}

/// What keeps a generation open on both servers.
type Opened = Box<dyn std::any::Any>;

impl HandRing {
    async fn start() -> Self {
        let (node0, rank0, token) = node().await;
        let node1 = PeerNode::start("127.0.0.1:0".parse().expect("addr"), &token)
            .await
            .expect("server");
        let rank1 = PeerId {
            rank: 1,
            addr: node1.addr().to_string(),
        };
        Self {
            node0,
            node1,
            rank0,
            rank1,
            token,
        }
    }

    /// Generation 1 opened on both servers; rank 1's chunk links (to rank 0's server, which
    /// never reads them), and rank 0's link to rank 1 as a bare socket, past its handshake.
    async fn rank1(&self) -> (DirectLinks, tokio::net::TcpStream, Opened) {
        use crate::transport::tcp::frame;
        use tokio::io::AsyncWriteExt;
        let open0 = self.node0.open(1, self.rank1.clone(), 4);
        let open1 = self.node1.open(1, self.rank0.clone(), 4);
        let (r0, r1) = (self.rank0.clone(), self.rank1.clone());
        let (c1, s1, incoming) = open1;
        let direct = DirectLinks::open(r1, r0.clone(), r0, &self.token.token, 1, incoming)
            .await
            .expect("rank 1's link");
        let mut link = tokio::net::TcpStream::connect(self.node1.addr())
            .await
            .expect("connect");
        link.write_all(&frame::hello(frame::Kind::Chunks, TOKEN.as_bytes(), 1, 0))
            .await
            .expect("hello");
        let (code, _) = frame::read_verdict(&mut link).await.expect("verdict");
        assert_eq!(code, tonic::Code::Ok);
        (direct, link, Box::new((open0, c1, s1)))
    }
}
