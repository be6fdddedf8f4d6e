//! Conformance suite: the same tests over the in-memory transport, gRPC and raw TCP.
//!
//! Dense results are compared bit for bit with a sequential sum in ring order (segment `s`
//! summed from rank `s` around the ring, see `allreduce`), not with a tolerance: the algorithm
//! fixes the order, so anything but exact equality is a bug. Sparse results are compared bit for
//! bit with `SparseGrad::merge_all` in rank order.

use std::time::Duration;

use funnel_common::embedding::SparseGrad;
use funnel_common::rng::SplitMix64;

use super::memory::{MemoryReceiver, MemorySender};
use super::{Chunk, PeerId, RingConfig, RingError, SparseBlock, StepTag};
use super::{all_reduce, memory, segments, sparse_exchange};
use crate::transport::{DenseLinks, GenerationLinks, JobToken, PeerNode, Security};
use funnel_common::spec::RingTransport;
use tokio::task::block_in_place;

mod refusals;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Grpc,
    Tcp,
}

const TOKEN: &str = "conformance-token";
const KINDS: [Kind; 3] = [Kind::Memory, Kind::Grpc, Kind::Tcp];

fn tag(generation: u64) -> StepTag {
    StepTag {
        generation,
        step: 11,
        layout_hash: 0xfeed_beef,
    }
}

/// One rank's links over either transport.
enum Links {
    Memory {
        ctx: MemorySender<Chunk>,
        crx: MemoryReceiver<Chunk>,
        stx: MemorySender<SparseBlock>,
        srx: MemoryReceiver<SparseBlock>,
    },
    Net(Box<GenerationLinks>),
}

impl Links {
    async fn dense(
        &mut self,
        c: &RingConfig,
        t: StepTag,
        buf: &mut [f32],
    ) -> Result<(), RingError> {
        match self {
            Links::Memory { ctx, crx, .. } => all_reduce(c, t, buf, ctx, crx).await,
            // The raw TCP ring blocks its thread: this runtime's other ranks go on elsewhere.
            Links::Net(l) => match &mut l.dense {
                DenseLinks::Tcp(d) => block_in_place(|| d.all_reduce(c, t, buf, None, &|| false)),
                dense => dense.all_reduce(c, t, buf).await,
            },
        }
    }

    async fn sparse(
        &mut self,
        c: &RingConfig,
        t: StepTag,
        g: &[SparseGrad],
    ) -> Result<Vec<SparseGrad>, RingError> {
        match self {
            Links::Memory { stx, srx, .. } => sparse_exchange(c, t, g, stx, srx).await,
            Links::Net(l) => sparse_exchange(c, t, g, &mut l.sparse_tx, &mut l.sparse_rx).await,
        }
    }

    /// After a successful exchange: wait until the neighbour has read everything; its
    /// verdict on both links (one of which carried nothing) must be a clean end.
    async fn finish(self, wait: Duration) {
        if let Links::Net(l) = self {
            match tokio::time::timeout(wait, l.finish()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("finishing the links: {e}"),
                Err(_) => panic!("finishing the links took over {wait:?}"),
            }
        }
    }
}

/// The links of `n` ranks (rank `i` in generation `generations[i]`), their peer ids and the
/// servers to keep alive.
async fn setup(kind: Kind, generations: &[u64]) -> (Vec<Links>, Vec<PeerId>, Vec<PeerNode>) {
    let n = generations.len();
    match kind {
        Kind::Memory => {
            let links = memory::ring::<Chunk>(n, 2)
                .into_iter()
                .zip(memory::ring::<SparseBlock>(n, 2))
                .map(|((ctx, crx), (stx, srx))| Links::Memory { ctx, crx, stx, srx })
                .collect();
            let peers = (0..n)
                .map(|rank| PeerId {
                    rank,
                    addr: "memory".into(),
                })
                .collect();
            (links, peers, Vec::new())
        }
        Kind::Grpc | Kind::Tcp => {
            let transport = if let Kind::Tcp = kind {
                RingTransport::Tcp
            } else {
                RingTransport::Grpc
            };
            let token = Security::plain(JobToken::new(TOKEN).expect("token"));
            let bind = "127.0.0.1:0".parse().expect("addr");
            let (mut nodes, mut peers) = (Vec::new(), Vec::new());
            for rank in 0..n {
                let node = PeerNode::start(bind, &token).await.expect("server");
                peers.push(PeerId {
                    rank,
                    addr: node.addr().to_string(),
                });
                nodes.push(node);
            }
            let mut links = Vec::new();
            for i in 0..n {
                let (l, r) = (peers[(i + n - 1) % n].clone(), peers[(i + 1) % n].clone());
                let g = GenerationLinks::open(
                    &nodes[i],
                    peers[i].clone(),
                    l,
                    r,
                    generations[i],
                    &token,
                    transport,
                )
                .await
                .expect("links");
                links.push(Links::Net(Box::new(g)));
            }
            (links, peers, nodes)
        }
    }
}

fn config(rank: usize, size: usize, chunk_len: usize, timeout_ms: u64) -> RingConfig {
    RingConfig {
        rank,
        size,
        chunk_len,
        recv_timeout: Duration::from_millis(timeout_ms),
    }
}

/// Runs a dense all-reduce of `inputs` (one per rank) with per-rank tags.
async fn dense(
    kind: Kind,
    tags: &[StepTag],
    chunk_len: usize,
    timeout_ms: u64,
    inputs: Vec<Vec<f32>>,
) -> (Vec<Result<Vec<f32>, RingError>>, Vec<PeerId>) {
    let n = inputs.len();
    let gens: Vec<u64> = tags.iter().map(|t| t.generation).collect();
    let (links, peers, nodes) = setup(kind, &gens).await;
    let mut handles = Vec::new();
    for (i, (mut buf, mut l)) in inputs.into_iter().zip(links).enumerate() {
        let (c, t) = (config(i, n, chunk_len, timeout_ms), tags[i]);
        handles.push(tokio::spawn(async move {
            let out = l.dense(&c, t, &mut buf).await.map(|()| buf);
            if out.is_ok() {
                l.finish(c.recv_timeout).await;
            }
            out
        }));
    }
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.await.expect("rank task"));
    }
    drop(nodes);
    (outs, peers)
}

/// Runs a sparse exchange of `inputs` (one gradient list per rank).
async fn sparse(
    kind: Kind,
    inputs: Vec<Vec<SparseGrad>>,
) -> Vec<Result<Vec<SparseGrad>, RingError>> {
    let n = inputs.len();
    let (links, _peers, nodes) = setup(kind, &vec![1; n]).await;
    let mut handles = Vec::new();
    for (i, (g, mut l)) in inputs.into_iter().zip(links).enumerate() {
        let c = config(i, n, 8, 2000);
        handles.push(tokio::spawn(async move {
            let out = l.sparse(&c, tag(1), &g).await;
            if out.is_ok() {
                l.finish(c.recv_timeout).await;
            }
            out
        }));
    }
    let mut outs = Vec::new();
    for h in handles {
        outs.push(h.await.expect("rank task"));
    }
    drop(nodes);
    outs
}

fn random_buffers(n: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
                .collect()
        })
        .collect()
}

/// The sum in the ring's order: segment `s` starts at rank `s` and adds ranks `s+1, s+2, ...`.
fn ring_order_sum(inputs: &[Vec<f32>]) -> Vec<f32> {
    let n = inputs.len();
    let len = inputs[0].len();
    let mut out = vec![0.0; len];
    for (s, seg) in segments(len, n).into_iter().enumerate() {
        for j in seg {
            let mut acc = inputs[s][j];
            for k in 1..n {
                acc += inputs[(s + k) % n][j];
            }
            out[j] = acc;
        }
    }
    out
}

async fn check_dense(kind: Kind, n: usize) {
    for len in [0, 1, 7, 1000, 1001] {
        // Chunks smaller than segments (3) and larger than some (64), so both paths run.
        for chunk_len in [3, 64] {
            let inputs = random_buffers(n, len, (n * 10_000 + len) as u64);
            let want = ring_order_sum(&inputs);
            let tags = vec![tag(1); n];
            let (outs, _) = dense(kind, &tags, chunk_len, 2000, inputs).await;
            for (rank, out) in outs.into_iter().enumerate() {
                let got =
                    out.unwrap_or_else(|e| panic!("{kind:?} n={n} len={len} rank {rank}: {e}"));
                let same = got.len() == want.len()
                    && got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{kind:?} n={n} len={len} chunk={chunk_len} rank {rank}"
                );
            }
        }
    }
}

macro_rules! dense_tests {
    ($($name:ident: $n:expr),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for kind in KINDS {
                check_dense(kind, $n).await;
            }
        }
    )*};
}

dense_tests!(dense_1_rank: 1, dense_2_ranks: 2, dense_3_ranks: 3, dense_4_ranks: 4, dense_5_ranks: 5);

fn grad(table: usize, ids: Vec<u32>, seed: u64) -> SparseGrad {
    let mut rng = SplitMix64::new(seed);
    let rows = (0..ids.len() * 3)
        .map(|_| (rng.next_f64() - 0.5) as f32)
        .collect();
    SparseGrad::new(table, 3, ids, rows).expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_overlapping_disjoint_and_empty() {
    for kind in KINDS {
        for n in 1..=5usize {
            let inputs: Vec<Vec<SparseGrad>> = (0..n)
                .map(|r| {
                    let r32 = r as u32;
                    // Table 0: overlapping ids; table 1: disjoint per rank, rank 1 touches none.
                    let overlap: Vec<u32> =
                        (0..12).filter(|id| !(id + r32).is_multiple_of(3)).collect();
                    let disjoint = if r == 1 {
                        vec![]
                    } else {
                        vec![r32 * 10, r32 * 10 + 4]
                    };
                    vec![
                        grad(0, overlap, r as u64),
                        grad(1, disjoint, 100 + r as u64),
                    ]
                })
                .collect();
            let want: Vec<SparseGrad> = (0..2)
                .map(|t| {
                    let per: Vec<SparseGrad> = inputs.iter().map(|g| g[t].clone()).collect();
                    SparseGrad::merge_all(&per).expect("merge")
                })
                .collect();
            for (rank, out) in sparse(kind, inputs).await.into_iter().enumerate() {
                let got = out.unwrap_or_else(|e| panic!("{kind:?} n={n} rank {rank}: {e}"));
                assert_eq!(got, want, "{kind:?} n={n} rank {rank}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_larger_than_a_link_holds_are_summed_exactly() {
    // Over raw TCP a rank writes and reads without blocking, as far as each link moves: 8 MiB
    // chunks are more than a loopback link holds, so every frame is written and read in many
    // parts, with reads between the writes of one frame.
    let (n, chunk_len) = (2, 1 << 21);
    let inputs = random_buffers(n, n * chunk_len, 77);
    let want = ring_order_sum(&inputs);
    for kind in KINDS {
        let (outs, _) = dense(kind, &vec![tag(1); n], chunk_len, 20_000, inputs.clone()).await;
        for (rank, out) in outs.into_iter().enumerate() {
            let got = out.unwrap_or_else(|e| panic!("{kind:?} rank {rank}: {e}"));
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.len() == want.len(), "{kind:?} rank {rank}");
        }
    }
}
