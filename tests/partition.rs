//! A partition (issue 6 point 5): one of three workers reaches the coordinator through a TCP
//! proxy that, after the job is under way, stops forwarding in both directions (the
//! connections stay open, the bytes stop: what a dropped link looks like). The coordinator
//! declares the worker dead after the heartbeat timeout and fences it; the others go on in a
//! new generation. When the coordinator logs the removal the proxy forwards again, and the
//! cut-off worker's stalled calls are refused as coming from a fenced worker: it exits with an
//! error saying so, while the job completes and its audit passes.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use support::procs::{
    LineHook, audit_passes, setup, spawn_worker, start_coordinator, text, waiter,
};

/// Link state: forwarding, or cut (copiers wait on the condvar until it heals).
#[derive(Default)]
struct Link {
    cut: Mutex<bool>,
    healed: Condvar,
    /// Bytes forwarded from the worker to the coordinator.
    upstream_bytes: AtomicU64,
}

impl Link {
    fn set_cut(&self, cut: bool) {
        *self.cut.lock().expect("link") = cut;
        self.healed.notify_all();
    }

    /// Blocks while the link is cut.
    fn pass(&self) {
        let mut cut = self.cut.lock().expect("link");
        while *cut {
            cut = self.healed.wait(cut).expect("link");
        }
    }
}

/// Copies `from` to `to` through `link`; cuts the link once `cut_after` upstream bytes passed.
fn copy(mut from: TcpStream, mut to: TcpStream, link: Arc<Link>, upstream: bool, cut_after: u64) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        link.pass();
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
        if upstream {
            let total = link.upstream_bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total >= cut_after && total - (n as u64) < cut_after {
                link.set_cut(true);
            }
        }
    }
}

/// A proxy on an ephemeral port to `target`; returns its address.
fn proxy(target: String, link: Arc<Link>, cut_after: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let (l1, l2) = (link.clone(), link.clone());
            std::thread::spawn(move || copy(client, server, l1, true, cut_after));
            std::thread::spawn(move || copy(s2, c2, l2, false, u64::MAX));
        }
    });
    addr
}

#[test]
fn a_worker_cut_off_from_the_coordinator_is_fenced_and_the_job_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path(), "30000", "1000", 3);
    let out = format!("file://{}/out", dir.path().display());
    let link = Arc::new(Link::default());
    let healer: LineHook = {
        let link = link.clone();
        Arc::new(move |line: &str| {
            if line.contains("workers removed") {
                link.set_cut(false);
            }
        })
    };
    let (coordinator, clog, addr) =
        start_coordinator(&spec, &out, "127.0.0.1:0", &[], Some(healer));
    // 40 KB upstream: GetJob, Register and a few dozen heartbeats and step votes.
    let via = proxy(addr.clone(), link.clone(), 40 << 10);
    let mut workers = Vec::new();
    for w in 0..3 {
        let url = format!("http://{}", if w == 2 { &via } else { &addr });
        let (child, log) = spawn_worker(&url, &[]);
        workers.push((waiter(child), log));
    }
    let (status, _) = waiter(coordinator).join().expect("waiter");
    assert!(status.success(), "coordinator failed:\n{}", text(&clog));
    let ends: Vec<_> = workers
        .into_iter()
        .map(|(h, log)| (h.join().expect("waiter").0, log))
        .collect();
    for (status, log) in &ends[..2] {
        assert!(
            status.success(),
            "a connected worker failed:\n{}",
            text(log)
        );
    }
    let (status, log) = &ends[2];
    let said = text(log);
    assert!(
        !status.success(),
        "the cut-off worker must not finish:\n{said}"
    );
    assert!(
        said.contains("removed from the ring") && said.contains("no heartbeat"),
        "the cut-off worker is told it was fenced, and why:\n{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
    assert!(text(&clog).contains("workers removed"));
    audit_passes(&out);
}
