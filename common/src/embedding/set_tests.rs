//! Gather and backward against naive references (f64, one value at a time) and finite
//! differences, with shared tables, repeated ids and empty bags.

use super::*;
use crate::batch::{Bag, Batch};
use crate::rng::SplitMix64;
use crate::spec::{CategoricalSpec, FeaturesSpec, ListSpec};

fn cat(column: &str, buckets: u64, dim: usize, table: Option<&str>) -> CategoricalSpec {
    CategoricalSpec {
        column: column.into(),
        buckets,
        dim,
        table: table.map(String::from),
        cross: Vec::new(),
    }
}

fn list(column: &str, buckets: u64, dim: usize, table: Option<&str>) -> ListSpec {
    ListSpec {
        column: column.into(),
        buckets,
        dim,
        max_len: 5,
        separator: None,
        table: table.map(String::from),
    }
}

/// Tables: user [30, 4], items [50, 3] (item, prev_item and hist share it), shop [20, 2],
/// tags [25, 2]. Gathered row: user 4 | item 3 | shop 2 | prev_item 3 | hist 3 | tags 2.
pub(super) fn features() -> FeaturesSpec {
    FeaturesSpec {
        categorical: vec![
            cat("user", 30, 4, None),
            cat("item", 50, 3, Some("items")),
            cat("shop", 20, 2, None),
            cat("prev_item", 50, 3, Some("items")),
        ],
        numeric: Vec::new(),
        list: vec![
            list("hist", 50, 3, Some("items")),
            list("tags", 25, 2, None),
        ],
    }
}

fn set() -> EmbeddingSet {
    EmbeddingSet::new(&features(), 11).expect("set")
}

/// A batch whose ids crowd into few buckets (many repeats) and whose bags are 0..=5 long.
pub(super) fn batch(rows: usize, seed: u64) -> Batch {
    let mut rng = SplitMix64::new(seed);
    let f = features();
    let mut b = Batch::empty(f.categorical.len(), f.list.len(), 0, 0);
    b.rows = rows;
    for (col, spec) in b.categorical.iter_mut().zip(&f.categorical) {
        *col = (0..rows)
            .map(|_| rng.below(spec.buckets.min(12)) as u32)
            .collect();
    }
    for (bag, spec) in b.lists.iter_mut().zip(&f.list) {
        *bag = Bag::new();
        for _ in 0..rows {
            for _ in 0..rng.below(6) {
                bag.ids.push(rng.below(spec.buckets.min(9)) as u32);
            }
            bag.offsets.push(bag.ids.len() as u32);
        }
    }
    b
}

/// Naive gather in f64.
fn reference_gather(set: &EmbeddingSet, b: &Batch) -> Vec<f64> {
    let mut out = Vec::new();
    for r in 0..b.rows {
        for s in set.features() {
            let t = &set.tables()[s.table];
            let ids = if s.pooled {
                b.lists[s.field].row(r).to_vec()
            } else {
                vec![b.categorical[s.field][r]]
            };
            for j in 0..s.dim {
                let sum: f64 = ids.iter().map(|&id| t.row(id)[j] as f64).sum();
                out.push(if ids.is_empty() {
                    0.0
                } else {
                    sum / ids.len() as f64
                });
            }
        }
    }
    out
}

/// Naive dense gradients per table in f64.
fn reference_backward(set: &EmbeddingSet, b: &Batch, g: &[f32]) -> Vec<Vec<f64>> {
    let mut dense: Vec<Vec<f64>> = set
        .tables()
        .iter()
        .map(|t| vec![0.0; t.rows() * t.dim()])
        .collect();
    let total = set.total_dim();
    for r in 0..b.rows {
        for s in set.features() {
            let ids = if s.pooled {
                b.lists[s.field].row(r).to_vec()
            } else {
                vec![b.categorical[s.field][r]]
            };
            for &id in &ids {
                for j in 0..s.dim {
                    let up = g[r * total + s.offset + j] as f64;
                    dense[s.table][id as usize * s.dim + j] += up / ids.len() as f64;
                }
            }
        }
    }
    dense
}

pub(super) fn upstream(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect()
}

#[test]
fn layout_numbers_tables_by_first_use_and_shares_them() {
    let s = set();
    let names: Vec<&str> = s.tables().iter().map(|t| t.name()).collect();
    assert_eq!(names, ["user", "items", "shop", "tags"]);
    let slots: Vec<(usize, usize, usize, bool)> = s
        .features()
        .iter()
        .map(|f| (f.table, f.offset, f.dim, f.pooled))
        .collect();
    let expected = [
        (0, 0, 4, false),
        (1, 4, 3, false),
        (2, 7, 2, false),
        (1, 9, 3, false),
        (1, 12, 3, true),
        (3, 15, 2, true),
    ];
    assert_eq!(slots, expected);
    assert_eq!(s.total_dim(), 17);
    assert_eq!(s.features()[4].key, "features.list[0]");
    assert_eq!(s.table_index("items"), Some(1));
}

#[test]
fn gather_equals_the_naive_reference() {
    let s = set();
    let b = batch(64, 1);
    let got = s.gather(&b).expect("gather");
    let want = reference_gather(&s, &b);
    assert_eq!(got.len(), 64 * 17);
    for (i, (x, y)) in got.iter().zip(&want).enumerate() {
        assert!((*x as f64 - y).abs() < 1e-6, "value {i}: {x} vs {y}");
    }
    let mut reused = vec![9.0; 3];
    s.gather_into(&b, &mut reused).expect("gather into");
    assert_eq!(reused, got);
    // Empty bags gather zeros; a categorical row is an exact copy.
    let r = (0..64)
        .find(|&r| b.lists[1].row(r).is_empty())
        .expect("an empty bag");
    assert_eq!(&got[r * 17 + 15..r * 17 + 17], &[0.0, 0.0]);
    assert_eq!(&got[4..7], s.tables()[1].row(b.categorical[1][0]));
}

#[test]
fn backward_equals_the_naive_dense_reference() {
    let s = set();
    for seed in 0..5 {
        let b = batch(64, seed);
        let g = upstream(64 * 17, seed + 10);
        let grads = s.backward(&b, &g).expect("backward");
        let want = reference_backward(&s, &b, &g);
        assert_eq!(grads.len(), 4);
        for (t, (sg, dense)) in grads.iter().zip(&want).enumerate() {
            let table = &s.tables()[t];
            assert_eq!(sg.table, t);
            sg.validate(table.rows()).expect("sorted, unique, in range");
            // Touched ids are exactly the ids the batch uses for this table.
            let mut used: Vec<u32> = Vec::new();
            for f in s.features().iter().filter(|f| f.table == t) {
                if f.pooled {
                    used.extend(&b.lists[f.field].ids);
                } else {
                    used.extend(&b.categorical[f.field]);
                }
            }
            used.sort_unstable();
            used.dedup();
            assert_eq!(sg.ids, used, "table {t}");
            for (x, y) in sg.to_dense(table.rows()).iter().zip(dense) {
                assert!((*x as f64 - y).abs() < 1e-5, "table {t}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn backward_matches_finite_differences_of_the_gather() {
    let s = set();
    let b = batch(32, 3);
    let total = s.total_dim();
    let g = upstream(32 * total, 4);
    let grads = s.backward(&b, &g).expect("backward");
    let loss = |s: &EmbeddingSet| -> f64 {
        let out = s.gather(&b).expect("gather");
        out.iter().zip(&g).map(|(&o, &u)| o as f64 * u as f64).sum()
    };
    let mut rng = SplitMix64::new(5);
    for _ in 0..40 {
        let t = rng.below(4) as usize;
        let (rows, dim) = (s.tables()[t].rows(), s.tables()[t].dim());
        let (id, j) = (rng.below(12) as usize, rng.below(dim as u64) as usize);
        let h = 0.25f32; // the gather is linear: a large step has no truncation error
        let mut plus = s.clone();
        plus.tables_mut()[t].data_mut()[id * dim + j] += h;
        let mut minus = s.clone();
        minus.tables_mut()[t].data_mut()[id * dim + j] -= h;
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
        let analytic = grads[t].to_dense(rows)[id * dim + j] as f64;
        assert!(
            (fd - analytic).abs() < 1e-4,
            "table {t} id {id}: {fd} vs {analytic}"
        );
    }
}

#[test]
fn shared_tables_sum_contributions_from_every_feature() {
    let s = set();
    let mut b = Batch::empty(4, 2, 0, 0);
    b.rows = 1;
    b.categorical = vec![vec![0], vec![7], vec![0], vec![7]];
    b.lists[0] = Bag {
        offsets: vec![0, 4],
        ids: vec![7, 3, 7, 5],
    };
    b.lists[1] = Bag {
        offsets: vec![0, 0],
        ids: Vec::new(),
    };
    let g: Vec<f32> = (0..17).map(|i| i as f32).collect();
    let grads = s.backward(&b, &g).expect("backward");
    let items = &grads[1];
    assert_eq!(items.ids, [3, 5, 7]);
    // id 7: item (cols 4..7) + prev_item (9..12) + twice a quarter of hist (12..15).
    let want: Vec<f32> = (0..3)
        .map(|j| (4 + j) as f32 + (9 + j) as f32 + 2.0 * (12 + j) as f32 / 4.0)
        .collect();
    assert_eq!(items.row(2), &want[..]);
    assert_eq!(items.row(0), &[3.0, 3.25, 3.5]);
    assert!(grads[3].is_empty(), "an empty bag touches nothing");
}

#[test]
fn shapes_and_ids_are_checked() {
    let s = set();
    let good = batch(8, 2);
    let mut b = good.clone();
    b.categorical.pop();
    assert!(matches!(s.gather(&b), Err(EmbeddingError::Shape(_))));
    let mut b = good.clone();
    b.categorical[2][3] = 20; // shop has 20 rows
    let err = s.gather(&b).expect_err("out of range");
    assert!(err.to_string().contains("features.categorical[2]"), "{err}");
    let mut b = good.clone();
    b.lists[0].offsets[8] = b.lists[0].ids.len() as u32 + 1;
    assert!(s.gather(&b).is_err());
    assert!(s.backward(&good, &[0.0; 5]).is_err());
    let empty = Batch::empty(4, 2, 0, 0);
    assert!(s.gather(&empty).expect("no rows").is_empty());
    let grads = s.backward(&empty, &[]).expect("no rows");
    assert!(grads.iter().all(SparseGrad::is_empty));
}

#[test]
fn mismatched_shared_tables_and_restored_tables_are_checked() {
    let mut f = features();
    f.list[0].dim = 4;
    let err = EmbeddingSet::new(&f, 1).expect_err("mismatch");
    assert!(err.to_string().contains("features.list[0]"), "{err}");

    let s = set();
    let mut tables = s.tables().to_vec();
    tables.reverse();
    let restored = EmbeddingSet::from_tables(&features(), tables.clone()).expect("restore");
    assert_eq!(restored.tables(), s.tables());
    tables.pop();
    assert!(EmbeddingSet::from_tables(&features(), tables).is_err());
    let none = EmbeddingSet::new(&FeaturesSpec::default(), 1).expect("no features");
    assert_eq!(none.total_dim(), 0);
    let mut b = Batch::empty(0, 0, 0, 0);
    b.rows = 3;
    assert!(none.gather(&b).expect("gather").is_empty());
}
