//! Process death on purpose, for fault-injection tests of the coordinator and the workers
//! (issue 6): a real SIGKILL, so no destructor runs and no socket is closed politely.

/// Kills this process with SIGKILL after printing `why` on stderr. Uses `kill -KILL` on itself
/// (no unsafe code); aborts if that command is missing.
pub fn sigkill_self(why: &str) -> ! {
    eprintln!("fault injection: SIGKILL: {why}");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::process::abort()
}
