//! Named f32 tensors as safetensors (the format PyTorch, numpy and serving stacks read), with
//! shapes. Linear weights are stored in PyTorch's `[out, in]` layout by their producers.

use crate::error::{Error, Result};
use bytes::Bytes;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
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
/// stored in the header.
pub fn encode(tensors: &[NamedTensor], metadata: BTreeMap<String, String>) -> Result<Bytes> {
    let bad = |message: String| Error::Checkpoint {
        url: "model.safetensors".into(),
        message,
    };
    let raw: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| {
            let expected: usize = t.shape.iter().product();
            if expected != t.values.len() {
                return Err(bad(format!(
                    "tensor `{}` has {} values for shape {:?}",
                    t.name,
                    t.values.len(),
                    t.shape
                )));
            }
            let bytes = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((t.name.clone(), bytes, t.shape.clone()))
        })
        .collect::<Result<_>>()?;
    let views = raw
        .iter()
        .map(|(name, bytes, shape)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = (!metadata.is_empty()).then(|| metadata.into_iter().collect());
    safetensors::serialize(views, meta)
        .map(Bytes::from)
        .map_err(|e| bad(e.to_string()))
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
        let meta = BTreeMap::from([("format".to_string(), "funnel".to_string())]);
        let bytes = encode(&tensors, meta).expect("encodes");
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
