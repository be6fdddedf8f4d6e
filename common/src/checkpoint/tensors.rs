//! Named f32 tensors as safetensors (the format PyTorch, numpy and serving stacks read), with
//! shapes. Linear weights are stored in PyTorch's `[out, in]` layout by their producers.

use crate::error::{Error, Result};
use bytes::Bytes;
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Stable, readable name (`towers.click.layers.0.weight`).
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values; `product(shape)` of them.
    pub values: Vec<f32>,
}

/// Encodes tensors (any order; names must be unique) as safetensors bytes, with `metadata`
/// stored in the header. The bytes are a function of the input alone: tensors and metadata are
/// laid out in name order (the `safetensors` crate's writer takes the metadata as a `HashMap`,
/// whose per-process order would make equal checkpoints differ byte-wise and break the
/// MANIFEST's sha256 as a content identity). Readers use the `safetensors` crate ([`decode`]).
pub fn encode(tensors: &[NamedTensor], metadata: BTreeMap<String, String>) -> Result<Bytes> {
    let bad = |message: String| Error::Checkpoint {
        url: "model.safetensors".into(),
        message,
    };
    let mut sorted: Vec<&NamedTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(bad(format!("tensor `{}` given twice", w[0].name)));
    }
    // The header: a JSON object of `__metadata__` and one entry per tensor (serde_json's map
    // keeps keys sorted), offsets relative to the data that follows it.
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for t in &sorted {
        let expected: usize = t.shape.iter().product();
        if expected != t.values.len() || t.name == "__metadata__" {
            return Err(bad(format!(
                "tensor `{}` has {} values for shape {:?}",
                t.name,
                t.values.len(),
                t.shape
            )));
        }
        let end = offset + 4 * t.values.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // Pad the header with spaces to a multiple of 8 bytes, so the data is aligned.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for t in &sorted {
        for v in &t.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(Bytes::from(out))
}

/// Decodes f32 safetensors bytes, sorted by name.
pub fn decode(bytes: &[u8], origin: &str) -> Result<Vec<NamedTensor>> {
    let bad = |message: String| Error::Checkpoint {
        url: origin.to_string(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(NamedTensor {
            name,
            shape: view.shape().to_vec(),
            values,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_names_shapes_and_bits() {
        let tensors = vec![
            NamedTensor {
                name: "towers.click.layers.0.weight".into(),
                shape: vec![2, 3],
                values: vec![1.0, -0.0, f32::MIN_POSITIVE, 3.5, 1e-30, -7.25],
            },
            NamedTensor {
                name: "embeddings.items".into(),
                shape: vec![4, 1],
                values: vec![0.1, 0.2, 0.3, 0.4],
            },
        ];
        let meta = BTreeMap::from([
            ("format".to_string(), "funnel".to_string()),
            ("layout".to_string(), "0123".to_string()),
        ]);
        let bytes = encode(&tensors, meta.clone()).expect("encodes");
        // The bytes depend on the content only, not on the input order.
        let reversed: Vec<NamedTensor> = tensors.iter().rev().cloned().collect();
        assert_eq!(bytes, encode(&reversed, meta.clone()).expect("encodes"));
        // The safetensors crate reads our header and metadata.
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
        let got = header.metadata().clone().expect("metadata");
        assert_eq!(got.into_iter().collect::<BTreeMap<_, _>>(), meta);
        let back = decode(&bytes, "t").expect("decodes");
        let mut want = tensors.clone();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back.len(), 2);
        for (a, b) in back.iter().zip(&want) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.shape, b.shape);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.values), bits(&b.values));
        }
    }

    #[test]
    fn shape_mismatch_and_garbage_are_errors() {
        let t = NamedTensor {
            name: "x".into(),
            shape: vec![3],
            values: vec![1.0],
        };
        assert!(encode(&[t], BTreeMap::new()).is_err());
        assert!(decode(b"not a safetensors file", "m").is_err());
    }
}
