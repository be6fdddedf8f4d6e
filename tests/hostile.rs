//! Hostile or broken peers (issue 6 point 7), as real processes: one of three workers sends a
//! corrupted all-reduce chunk at step 20 (`FUNNEL_FAULT_CORRUPT`): a NaN, an infinity, another
//! layout hash, an older generation, one value too few, one too many. Its right-hand neighbour
//! refuses the chunk before adding anything, logs the error naming the sender, and reports it;
//! the coordinator fences the sender, the others redo the step without it, and the job
//! completes with every row counted once. Nobody panics; the sender is told why it was removed.

mod support;

use support::procs::{audit_passes, setup, spawn_worker, start_coordinator, text, waiter};

#[test]
fn each_corrupted_chunk_is_refused_and_its_sender_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = setup(dir.path(), "20000", "1000", 3);
    let mut table = Vec::new();
    for kind in ["nan", "inf", "layout", "stale", "truncated", "oversized"] {
        let out = format!("file://{}/out-{kind}", dir.path().display());
        let (coordinator, clog, addr) = start_coordinator(&spec, &out, "127.0.0.1:0", &[], None);
        let url = format!("http://{addr}");
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let env = if w == 1 {
                    vec![("FUNNEL_FAULT_CORRUPT", format!("20:{kind}"))]
                } else {
                    Vec::new()
                };
                let (child, log) = spawn_worker(&url, &env);
                (waiter(child), log)
            })
            .collect();
        let (status, _) = waiter(coordinator).join().expect("waiter");
        let clog = text(&clog);
        assert!(status.success(), "{kind}: coordinator failed:\n{clog}");
        assert!(clog.contains("fencing the sender"), "{kind}:\n{clog}");
        let ends: Vec<_> = workers
            .into_iter()
            .map(|(h, log)| (h.join().expect("waiter").0, text(&log)))
            .collect();
        for (w, (status, log)) in ends.iter().enumerate() {
            assert!(
                !log.contains("panicked"),
                "{kind}: worker {w} panicked:\n{log}"
            );
            if w != 1 {
                assert!(status.success(), "{kind}: worker {w} failed:\n{log}");
            }
        }
        let (status, log) = &ends[1];
        assert!(
            !status.success(),
            "{kind}: the hostile worker must not finish:\n{log}"
        );
        assert!(
            log.contains("removed from the ring") && log.contains("refused its message"),
            "{kind}: the hostile worker is told why:\n{log}"
        );
        // The hostile worker's right-hand neighbour (ranks follow registration order) refuses.
        let refusal = [&ends[0].1, &ends[2].1]
            .into_iter()
            .flat_map(|log| log.lines())
            .find(|l| l.contains("refused a message of the left neighbour"))
            .unwrap_or_else(|| {
                panic!(
                    "{kind}: a neighbour logs the refusal:\n{}\n{}",
                    ends[0].1, ends[2].1
                )
            })
            .to_string();
        audit_passes(&out);
        table.push(format!("| {kind} | {refusal} |"));
    }
    eprintln!("| corruption | the receiver's log line |\n|---|---|");
    for row in table {
        eprintln!("{row}");
    }
}
