//! A checkpoint's tensors, and how far two models are apart: for the tests that compare a
//! distributed run with another (1 vs 3 workers, with faults vs without).

use std::collections::BTreeMap;
use std::path::Path;

/// The latest checkpoint's tensors by name.
pub fn tensors(output: &Path, file: &str) -> BTreeMap<String, Vec<f32>> {
    let ckpt = output.join("checkpoints");
    let latest = std::fs::read_to_string(ckpt.join("LATEST")).expect("LATEST");
    let bytes = std::fs::read(ckpt.join(latest.trim()).join(file)).expect("checkpoint file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v)
        })
        .collect()
}

/// The worst per-tensor relative L2 difference, and its tensor.
pub fn worst_relative(
    a: &BTreeMap<String, Vec<f32>>,
    b: &BTreeMap<String, Vec<f32>>,
) -> (f64, String) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same tensors"
    );
    let mut worst = (0.0, String::new());
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.len(), y.len(), "{name}");
        let diff: f64 = x
            .iter()
            .zip(y)
            .map(|(p, q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = y.iter().map(|q| f64::from(*q).powi(2)).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-12);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}
