//! The byte layout of a raw TCP ring link (protocol `FUNNEL-RING/2`), all integers
//! little-endian:
//!
//! ```text
//! client -> server   MAGIC (14 bytes) | kind u8 | token_len u16 | token
//!                    | generation u64 | sender_rank u32
//! server -> client   verdict: code u32 | len u32 | message (UTF-8)      code 0: accepted
//! client -> server   frames: meta_len u32 | payload_len u32 | meta | payload   (repeated)
//!                    then FIN at a frame boundary: the end of the stream
//! server -> client   verdict: code 0 and the message count, or the refusal's code and text
//! ```
//!
//! `meta` is the kind's `funnel.v1` message (protobuf) without its bulk field, `payload` that
//! field's bytes (a chunk's f32 values), so the values cross the link as they are: no protobuf
//! copy on either side. Codes are gRPC's, so a refusal reads the same on either transport.
//! Every length is bounded before anything is allocated for it.
//!
//! A chunk link (kind 1) is routed by the generation and rank of its hello and then read by
//! the ring itself (`super::direct`): it sends no final verdict, only a refusal (a stale
//! generation, a rank that is not the left-hand neighbour) in place of its first frame.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use crate::ring::pool::BufferPool;
use tonic::Code;

/// The first bytes of a raw ring link. Its first byte, `F`, tells it apart from HTTP/2's
/// preface (`P`) and a TLS ClientHello (0x16) on the shared peer port.
pub const MAGIC: &[u8; 14] = b"FUNNEL-RING/2\n";

/// Longest job token a handshake may carry.
pub const MAX_TOKEN: usize = 4096;

/// Longest verdict message.
pub const MAX_VERDICT: usize = 64 << 10;

/// What a link carries, named in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// All-reduce chunks.
    Chunks = 1,
    /// Sparse blocks.
    Sparse = 2,
}

/// What a link's handshake says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// What the link carries.
    pub kind: Kind,
    /// The presented job token (checked by the server).
    pub token: Vec<u8>,
    /// The ring generation the sender is in.
    pub generation: u64,
    /// The sender's rank in that generation.
    pub rank: u32,
}

/// The handshake: magic, kind, token, generation and the sender's rank.
pub fn hello(kind: Kind, token: &[u8], generation: u64, rank: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + 15 + token.len());
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(token.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(token);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&rank.to_le_bytes());
    out
}

/// Reads a handshake (the token not yet checked).
pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, String> {
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if &magic != MAGIC {
        return Err("handshake: not a FUNNEL-RING/2 link".into());
    }
    let mut head = [0u8; 3];
    r.read_exact(&mut head)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let kind = match head[0] {
        1 => Kind::Chunks,
        2 => Kind::Sparse,
        k => return Err(format!("handshake: unknown link kind {k}")),
    };
    let len = u16::from_le_bytes([head[1], head[2]]) as usize;
    if len > MAX_TOKEN {
        return Err(format!(
            "handshake: token of {len} bytes (at most {MAX_TOKEN})"
        ));
    }
    let mut token = vec![0u8; len];
    r.read_exact(&mut token)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let mut origin = [0u8; 12];
    r.read_exact(&mut origin)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (generation, rank) = origin.split_at(8);
    Ok(Hello {
        kind,
        token,
        generation: u64::from_le_bytes(generation.try_into().unwrap_or_default()),
        rank: u32::from_le_bytes(rank.try_into().unwrap_or_default()),
    })
}

/// A verdict: `code` (gRPC's) and a message, cut to [`MAX_VERDICT`] bytes.
pub fn verdict(code: Code, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_VERDICT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(8 + end);
    out.extend_from_slice(&(code as i32 as u32).to_le_bytes());
    out.extend_from_slice(&(end as u32).to_le_bytes());
    out.extend_from_slice(&message.as_bytes()[..end]);
    out
}

/// Reads a verdict.
pub async fn read_verdict<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(Code, String)> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let code = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if len > MAX_VERDICT {
        return Err(std::io::Error::other(format!(
            "verdict of {len} bytes (at most {MAX_VERDICT})"
        )));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).await?;
    Ok((
        Code::from(code as i32),
        String::from_utf8_lossy(&text).into_owned(),
    ))
}

/// A frame's 8-byte header.
pub fn frame_header(meta_len: usize, payload_len: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(meta_len as u32).to_le_bytes());
    h[4..].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h
}

/// Reads frames from one link. Header and meta come through a small read buffer; a payload is
/// read into a buffer of `pool` (beyond what the read buffer already holds, straight from the
/// socket), which returns to the pool once the ring has dropped it. `R` is an async socket or,
/// on a sparse link's reader thread, a blocking one ([`BlockingRead`]).
pub struct FrameReader<R> {
    inner: BufReader<R>,
    max: usize,
    pool: &'static BufferPool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames whose meta or payload exceed `max` bytes are refused.
    pub fn new(inner: R, max: usize, pool: &'static BufferPool) -> Self {
        Self {
            inner: BufReader::with_capacity(16 << 10, inner),
            max,
            pool,
        }
    }

    /// The next frame's (meta, payload); `None` at a clean end (EOF between frames).
    pub async fn next(&mut self) -> Result<Option<(Bytes, Bytes)>, String> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            let n = self
                .inner
                .read(&mut head[got..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(format!(
                        "the link ended inside a frame ({got} of 8 header bytes)"
                    ))
                };
            }
            got += n;
        }
        let meta_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let payload_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if meta_len > self.max || payload_len > self.max {
            return Err(format!(
                "frame of {meta_len} + {payload_len} bytes (at most {} each)",
                self.max
            ));
        }
        let ended = |e: std::io::Error| format!("the link ended inside a frame: {e}");
        let mut meta = vec![0u8; meta_len];
        self.inner.read_exact(&mut meta).await.map_err(ended)?;
        // Past what the read buffer holds, the payload is read straight from the socket.
        let mut payload = self.pool.take_filled(payload_len);
        let mut got = 0;
        while got < payload_len {
            let n = self
                .inner
                .read(&mut payload[got..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "the link ended inside a frame ({got} of {payload_len} payload bytes)"
                ));
            }
            got += n;
        }
        Ok(Some((Bytes::from(meta), self.pool.bytes(payload))))
    }
}

/// A blocking socket as an `AsyncRead` whose every poll reads (blocking the thread) and is
/// ready: for a sparse link's reader thread (`super::serve_link`) and the watch on a chunk
/// link's verdict (`super::direct`), never a runtime's worker.
/// The thread then sleeps in the kernel until bytes arrive, as a plain `read` does, instead of
/// waking through epoll and a runtime for every segment.
pub struct BlockingRead(pub std::net::TcpStream);

impl AsyncRead for BlockingRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        let socket = &mut self.get_mut().0;
        loop {
            match socket.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: Vec<u8>, max: usize) -> Vec<Result<Option<(Bytes, Bytes)>, String>> {
        let mut r = FrameReader::new(&bytes[..], max, &crate::ring::pool::CHUNKS);
        let mut out = Vec::new();
        loop {
            let f = r.next().await;
            let stop = !matches!(f, Ok(Some(_)));
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    fn frame(meta: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut v = frame_header(meta.len(), payload.len()).to_vec();
        v.extend_from_slice(meta);
        v.extend_from_slice(payload);
        v
    }

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let mut bytes = frame(b"m1", &[7; 300_000]);
        bytes.extend(frame(b"", b""));
        bytes.extend(frame(b"meta-3", b"p"));
        let got = frames(bytes, 1 << 20).await;
        let got: Vec<_> = got.into_iter().map(|f| f.expect("ok")).collect();
        assert_eq!(got.len(), 4);
        let (m, p) = got[0].clone().expect("frame");
        assert_eq!((&m[..], p.len(), p[299_999]), (&b"m1"[..], 300_000, 7));
        assert_eq!(got[1], Some((Bytes::new(), Bytes::new())));
        assert_eq!(got[2], Some((Bytes::from("meta-3"), Bytes::from("p"))));
        assert_eq!(got[3], None);
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let mut cut = frame(b"meta", &[1; 100]);
        cut.truncate(50);
        let got = frames(cut, 1 << 20).await;
        assert!(
            got[0]
                .as_ref()
                .expect_err("cut")
                .contains("38 of 100 payload bytes")
        );
        let got = frames(frame(b"m", &[0; 2000]), 1000).await;
        assert!(got[0].as_ref().expect_err("big").contains("at most 1000"));
        let got = frames(vec![1, 0, 0], 1000).await;
        assert!(
            got[0]
                .as_ref()
                .expect_err("short")
                .contains("3 of 8 header bytes")
        );
    }

    #[test]
    fn a_blocking_socket_reads_frames_written_in_pieces() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut bytes = frame(b"meta", &[5; 200_000]);
        bytes.extend(frame(b"m2", &[6; 10]));
        bytes.extend(frame(b"cut", &[7; 100]));
        bytes.truncate(bytes.len() - 40);
        let writer = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            // Small pieces, so reads return partial frames and the reader must go on.
            for piece in bytes.chunks(7_000) {
                s.write_all(piece).expect("write");
            }
        });
        let (socket, _) = listener.accept().expect("accept");
        let mut r = FrameReader::new(BlockingRead(socket), 1 << 20, &crate::ring::pool::CHUNKS);
        let first = futures::executor::block_on(r.next())
            .expect("read")
            .expect("frame");
        assert_eq!((&first.0[..], first.1.len()), (&b"meta"[..], 200_000));
        assert!(first.1.iter().all(|&b| b == 5));
        let second = futures::executor::block_on(r.next())
            .expect("read")
            .expect("frame");
        assert_eq!((&second.0[..], &second.1[..]), (&b"m2"[..], &[6u8; 10][..]));
        let cut = futures::executor::block_on(r.next()).expect_err("cut");
        assert!(cut.contains("60 of 100 payload bytes"), "{cut}");
        writer.join().expect("writer");
    }

    #[tokio::test]
    async fn handshake_and_verdict_round_trip() {
        let bytes = hello(Kind::Sparse, b"tok", 7, 2);
        assert_eq!(bytes[0], b'F');
        let got = read_hello(&mut &bytes[..]).await.expect("hello");
        let want = Hello {
            kind: Kind::Sparse,
            token: b"tok".to_vec(),
            generation: 7,
            rank: 2,
        };
        assert_eq!(got, want);
        let cut = read_hello(&mut &bytes[..bytes.len() - 1]).await;
        assert!(cut.is_err(), "a hello without its full rank");
        let mut wrong = bytes.clone();
        wrong[3] = b'X';
        assert!(read_hello(&mut &wrong[..]).await.is_err());
        let mut unknown = bytes;
        unknown[MAGIC.len()] = 9;
        let e = read_hello(&mut &unknown[..]).await.expect_err("kind");
        assert!(e.contains("kind 9"), "{e}");

        let v = verdict(Code::Unauthenticated, "wrong job token");
        let (code, text) = read_verdict(&mut &v[..]).await.expect("verdict");
        assert_eq!(
            (code, text.as_str()),
            (Code::Unauthenticated, "wrong job token")
        );
        let long = "é".repeat(MAX_VERDICT);
        let v = verdict(Code::Ok, &long);
        let (_, text) = read_verdict(&mut &v[..]).await.expect("cut verdict");
        assert!(text.len() <= MAX_VERDICT && text.chars().all(|c| c == 'é'));
    }
}
