//! The compute pool. burn's `flex` backend runs matmuls and reductions on rayon's global pool,
//! so its size is the number of compute threads; it can be set once per process.

/// Sizes rayon's global pool to `threads` (0 = one per core) and returns the size in effect
/// (an earlier call in this process wins: rayon's global pool cannot be resized).
pub fn init_compute_threads(threads: usize) -> usize {
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("compute-{i}"));
    if threads > 0 {
        builder = builder.num_threads(threads);
    }
    if let Err(e) = builder.build_global() {
        tracing::debug!("compute pool already set: {e}");
    }
    rayon::current_num_threads()
}
