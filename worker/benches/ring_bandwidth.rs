//! All-reduce bus bandwidth (issue 4 point 7): Funnel's ring all-reduce over its two ring
//! transports (`funnel`: raw TCP links, the default; `funnel-grpc`: gRPC streams), and a raw TCP
//! loopback ring moving the same bytes with no arithmetic (the ceiling), for each ring size and
//! buffer size; one JSON line per (impl, n, size) on stdout. docs/allreduce-benchmark.md
//! defines the figures; bench/allreduce.sh runs this beside torch.distributed (gloo).
//!
//! Every rank is its own process (this binary re-executed with `--child`), as gloo's ranks are,
//! so no rank shares an allocator, a runtime or a scheduler queue with another. The parent only
//! relays addresses and acts as the barrier: before each iteration it waits for every rank, then
//! says `go`; each rank times its own all-reduce, and an iteration's time is the slowest rank's.
//! Each rank also reads its process's CPU time (getrusage, user + system) around the all-reduce;
//! an iteration's CPU time is the sum over the ranks (`cpu_s`: the median over iterations).
//!
//! Environment: RANKS ("2 3 4"), SIZES_MIB ("1 4 16 64 256"), REPS (5), WARMUP (2),
//! IMPLS ("funnel funnel-grpc tcp"), CHUNK_LENS (values per chunk, "262144" as the default
//! `cluster.chunk_values`; several values sweep), RING_THREADS (tokio worker threads per Funnel
//! rank, 2; 0: a current-thread runtime, which drives the sockets on the thread that runs the
//! ring: an experiment, not how a worker runs, for funnel-grpc only: the raw TCP ring blocks
//! its thread while it runs).

use std::error::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Range;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use funnel_common::spec::RingTransport;
use funnel_worker::ring::{PeerId, RingConfig, StepTag, segments};
use funnel_worker::transport::{GenerationLinks, JobToken, PeerNode};

/// The allocator of the `funnel` binary (src/main.rs), so chunk buffers cost what they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn Error>>;

const MIB: usize = 1 << 20;

fn env_list(name: &str, default: &str) -> Res<Vec<usize>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    let list: Vec<usize> = text
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| format!("{name}: {s:?}: {e}")))
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(format!("{name} is empty").into());
    }
    Ok(list)
}

fn main() {
    // `cargo bench` passes `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let out = match args.first().map(String::as_str) {
        Some("--child") => child(&args[1..]),
        _ => parent(),
    };
    if let Err(e) = out {
        eprintln!("ring_bandwidth: {e}");
        std::process::exit(1);
    }
}

/// Runs every (impl, n, chunk_len) group, sizes within a group on the same connections.
fn parent() -> Res<()> {
    let ranks = env_list("RANKS", "2 3 4")?;
    let sizes = env_list("SIZES_MIB", "1 4 16 64 256")?;
    let reps = env_list("REPS", "5")?[0].max(1);
    let warmup = env_list("WARMUP", "2")?[0];
    let chunk_lens = env_list("CHUNK_LENS", "262144")?;
    let impls = std::env::var("IMPLS").unwrap_or_else(|_| "funnel funnel-grpc tcp".into());
    for imp in impls.split_whitespace() {
        let lens = match imp {
            "funnel" | "funnel-grpc" => chunk_lens.clone(),
            "tcp" => vec![0],
            _ => {
                return Err(format!("IMPLS: unknown {imp:?} (funnel, funnel-grpc, tcp)").into());
            }
        };
        for &n in &ranks {
            if n < 2 {
                return Err("RANKS: a ring needs at least 2 ranks".into());
            }
            for &chunk_len in &lens {
                group(imp, n, chunk_len, &sizes, warmup, reps)?;
            }
        }
    }
    Ok(())
}

/// One child rank, as the parent sees it.
struct Rank {
    proc: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Rank {
    fn say(&mut self, line: &str) -> Res<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(())
    }

    /// The rank's next line, which must start with `word`; the rest of it.
    fn expect(&mut self, word: &str) -> Res<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err(format!("a rank exited while the parent waited for {word:?}").into());
        }
        line.trim_end()
            .strip_prefix(word)
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| format!("expected {word:?} from a rank, got {line:?}").into())
    }
}

/// One ring of `n` child ranks of `imp`: connects them, times every size, prints its lines.
fn group(
    imp: &str,
    n: usize,
    chunk_len: usize,
    sizes: &[usize],
    warmup: usize,
    reps: usize,
) -> Res<()> {
    let exe = std::env::current_exe()?;
    let iters = warmup + reps;
    let size_arg = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut ranks = Vec::new();
    for rank in 0..n {
        let mut proc = Command::new(&exe)
            .args(["--child", imp, &rank.to_string(), &n.to_string()])
            .args([chunk_len.to_string(), size_arg.clone(), iters.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (stdin, stdout) = (proc.stdin.take(), proc.stdout.take());
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err("child without pipes".into());
        };
        let stdout = BufReader::new(stdout);
        ranks.push(Rank {
            proc,
            stdin,
            stdout,
        });
    }
    let addrs = ranks
        .iter_mut()
        .map(|r| r.expect("addr"))
        .collect::<Res<Vec<_>>>()?;
    let line = format!("addrs {}", addrs.join(" "));
    ranks.iter_mut().try_for_each(|r| r.say(&line))?;
    // Every rank has opened its generation before any chunk flows (the links' precondition).
    ranks
        .iter_mut()
        .try_for_each(|r| r.expect("ready").map(drop))?;
    for &mib in sizes {
        let (mut times, mut cpus) = (Vec::new(), Vec::new());
        for it in 0..iters {
            ranks.iter_mut().try_for_each(|r| r.say("go"))?;
            let (mut slowest, mut cpu) = (0.0f64, [0.0f64; 2]);
            for r in ranks.iter_mut() {
                // "SECONDS USER SYSTEM"
                let line = r.expect("t")?;
                let fields = line
                    .split(' ')
                    .map(str::parse::<f64>)
                    .collect::<Result<Vec<_>, _>>()?;
                let [secs, user, system] = fields[..] else {
                    return Err(format!("expected \"t SECONDS USER SYSTEM\", got {line:?}").into());
                };
                slowest = slowest.max(secs);
                cpu = [cpu[0] + user, cpu[1] + system];
            }
            if it >= warmup {
                times.push(slowest);
                cpus.push(cpu);
            }
        }
        report(imp, n, chunk_len, mib * MIB, &times, &cpus);
    }
    ranks.iter_mut().try_for_each(|r| r.say("quit"))?;
    for mut r in ranks {
        let status = r.proc.wait()?;
        if !status.success() {
            return Err(format!("a {imp} rank of {n} exited with {status}").into());
        }
    }
    Ok(())
}

/// One JSON line: median of the per-iteration times, algbw and busbw (nccl-tests) in GB/s,
/// and the CPU time of an iteration summed over the ranks (`cpus`: user, system), medians.
fn report(imp: &str, n: usize, chunk_len: usize, bytes: usize, times: &[f64], cpus: &[[f64; 2]]) {
    let median = |v: Vec<f64>| {
        let mut sorted = v;
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let median_s = median(times.to_vec());
    let cpu_s = median(cpus.iter().map(|c| c[0] + c[1]).collect());
    let cpu_user_s = median(cpus.iter().map(|c| c[0]).collect());
    let algbw = bytes as f64 / median_s / 1e9;
    let busbw = algbw * 2.0 * (n - 1) as f64 / n as f64;
    let line = serde_json::json!({
        "impl": imp, "n": n, "bytes": bytes, "size_mib": bytes / MIB,
        "chunk_len": (chunk_len > 0).then_some(chunk_len),
        "reps": times.len(), "median_s": median_s,
        "algbw_gbps": algbw, "busbw_gbps": busbw, "times_s": times,
        "cpu_s": cpu_s, "cpu_user_s": cpu_user_s,
    });
    println!("{line}");
    eprintln!("{imp} n={n} {} MiB: busbw {busbw:.3} GB/s", bytes / MIB);
}

/// What a child rank reads from the parent, one line at a time. A thread reads stdin, so a
/// Funnel rank can wait for its next line inside `block_on` and keep driving its runtime
/// meanwhile (with `RING_THREADS=0` nothing else would serve its peers' handshakes).
struct Parent {
    lines: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<String>>,
}

impl Parent {
    fn start() -> Self {
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { lines }
    }

    /// The next line, which must start with `word`; the rest of it.
    async fn next_async(&mut self, word: &str) -> Res<String> {
        let line = self.lines.recv().await.ok_or("the parent went away")??;
        line.strip_prefix(word)
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| format!("expected {word:?} from the parent, got {line:?}").into())
    }

    /// [`Self::next_async`], blocking (outside any runtime).
    fn next(&mut self, word: &str) -> Res<String> {
        futures::executor::block_on(self.next_async(word))
    }
}

/// A child rank: `--child IMPL RANK SIZE CHUNK_LEN SIZES_MIB ITERS`.
fn child(args: &[String]) -> Res<()> {
    let [imp, rank, n, chunk_len, sizes, iters] = args else {
        return Err(format!("bad child arguments {args:?}").into());
    };
    let (rank, n, chunk_len): (usize, usize, usize) =
        (rank.parse()?, n.parse()?, chunk_len.parse()?);
    let sizes: Vec<usize> = sizes.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let iters: usize = iters.parse()?;
    let mut parent = Parent::start();
    let transport = match imp.as_str() {
        "funnel" => Some(RingTransport::Tcp),
        "funnel-grpc" => Some(RingTransport::Grpc),
        _ => None,
    };
    match transport {
        Some(t) => funnel_rank(&mut parent, t, rank, n, chunk_len, &sizes, iters),
        None => tcp_rank(&mut parent, rank, n, &sizes, iters),
    }?;
    parent.next("quit").map(drop)
}

/// Funnel: `ring::all_reduce` over `GenerationLinks` (raw TCP links or gRPC streams to the
/// neighbours, job token on), as a worker uses them.
fn funnel_rank(
    p: &mut Parent,
    transport: RingTransport,
    rank: usize,
    n: usize,
    chunk_len: usize,
    sizes: &[usize],
    iters: usize,
) -> Res<()> {
    let threads = env_list("RING_THREADS", "2")?[0];
    if threads == 0 && transport == RingTransport::Tcp {
        // The raw TCP ring blocks the thread that runs it; on a current-thread runtime nothing
        // would then route the neighbour's link to it.
        return Err("RING_THREADS=0 applies to funnel-grpc only".into());
    }
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    let token = funnel_worker::transport::Security::plain(JobToken::new("ring-bandwidth-bench")?);
    let node = rt.block_on(PeerNode::start("127.0.0.1:0".parse()?, &token))?;
    println!("addr {}", node.addr());
    let addrs: Vec<String> = rt
        .block_on(p.next_async("addrs"))?
        .split(' ')
        .map(String::from)
        .collect();
    let peer = |r: usize| PeerId {
        rank: r,
        addr: addrs[r].clone(),
    };
    let (left, right) = (peer((rank + n - 1) % n), peer((rank + 1) % n));
    let mut links = rt.block_on(GenerationLinks::open(
        &node,
        peer(rank),
        left,
        right,
        1,
        &token,
        transport,
    ))?;
    println!("ready");
    let cfg = RingConfig {
        rank,
        size: n,
        chunk_len,
        // Generous: 3-4 ranks on 2 cores and 256 MiB may take seconds per all-reduce.
        recv_timeout: Duration::from_secs(600),
    };
    let mut step = 0;
    for &mib in sizes {
        let start = (rank + 1) as f32 * 1e-6;
        let mut buf = vec![start; mib * MIB / 4];
        for _ in 0..iters {
            // Every iteration multiplies the values by about n, so they are reset before the
            // next (untimed): the ring refuses values that are not finite, and long runs
            // (profiling, hundreds of iterations) overflowed.
            buf.fill(start);
            rt.block_on(p.next_async("go"))?;
            let tag = StepTag {
                generation: 1,
                step,
                layout_hash: 0xbe9c,
            };
            let cpu = cpu_times()?;
            let t = Instant::now();
            rt.block_on(links.dense.all_reduce(&cfg, tag, &mut buf))?;
            let secs = t.elapsed().as_secs_f64();
            let (user, system) = cpu_since(cpu)?;
            println!("t {secs} {user} {system}");
            step += 1;
        }
    }
    // The neighbour may already be gone; ending the streams cleanly is only courtesy here.
    let _ =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), links.finish()).await });
    Ok(())
}

/// CPU time of this process so far, (user, system) seconds, every thread counted (exited ones
/// too). Read around an iteration it is what a rank spent on it: its sums and copies (user),
/// its system calls and, on loopback, the kernel's TCP work, much of which runs in the sender's
/// context (system).
fn cpu_times() -> Res<(f64, f64)> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    Ok((secs(usage.user_time()), secs(usage.system_time())))
}

/// CPU time (user, system) since `before` (a [`cpu_times`] reading).
fn cpu_since(before: (f64, f64)) -> Res<(f64, f64)> {
    let now = cpu_times()?;
    Ok((now.0 - before.0, now.1 - before.1))
}

/// The byte ranges rank `i` of `n` sends in a ring all-reduce of `bytes`, in order: segment
/// `i - r` in reduce-scatter round `r`, then `i + 1 - r` in all-gather round `r` (see
/// `ring::allreduce`), so `2 (n - 1)` segments.
fn ring_sends(i: usize, n: usize, bytes: usize) -> Vec<Range<usize>> {
    let segs = segments(bytes / 4, n);
    let rs = (0..n - 1).map(|r| (i + n - r) % n);
    let ag = (0..n - 1).map(|r| (i + 1 + n - r) % n);
    rs.chain(ag)
        .map(|s| segs[s].start * 4..segs[s].end * 4)
        .collect()
}

/// The ceiling: blocking `std` TCP on loopback, each rank streaming to its right neighbour the
/// bytes its all-reduce would send while reading its left neighbour's; no arithmetic, no
/// framing, one `write_all`/`read_exact` per segment.
fn tcp_rank(p: &mut Parent, rank: usize, n: usize, sizes: &[usize], iters: usize) -> Res<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("addr {}", listener.local_addr()?);
    let addrs: Vec<String> = p.next("addrs")?.split(' ').map(String::from).collect();
    let right = TcpStream::connect(&addrs[(rank + 1) % n])?;
    let (left, _) = listener.accept()?;
    for s in [&right, &left] {
        s.set_nodelay(true)?;
    }
    println!("ready");
    for &mib in sizes {
        let bytes = mib * MIB;
        let src = vec![1u8; bytes];
        let mut dst = vec![0u8; bytes];
        let sends = ring_sends(rank, n, bytes);
        let recvs = ring_sends((rank + n - 1) % n, n, bytes);
        for _ in 0..iters {
            p.next("go")?;
            let cpu = cpu_times()?;
            let t = Instant::now();
            std::thread::scope(|sc| -> Res<()> {
                let sender = sc.spawn(|| -> std::io::Result<()> {
                    sends
                        .iter()
                        .try_for_each(|r| (&right).write_all(&src[r.clone()]))
                });
                for r in &recvs {
                    (&left).read_exact(&mut dst[r.clone()])?;
                }
                sender.join().map_err(|_| "sender thread panicked")??;
                Ok(())
            })?;
            let secs = t.elapsed().as_secs_f64();
            let (user, system) = cpu_since(cpu)?;
            println!("t {secs} {user} {system}");
        }
    }
    Ok(())
}
