//! The stable feature hash. A serving system in any language reproduces bucket ids from this
//! description alone (docs/hashing.md repeats it; tests pin fixed vectors):
//!
//! - Algorithm: XXH64 (xxHash, 64-bit variant), as in the reference C library.
//! - Seed per embedding table: `XXH64(UTF-8 bytes of the table name, seed = 0)`. A feature's
//!   table is its `table` key, or its column name when absent; features sharing a table share
//!   the seed, so the same id lands on the same row from either feature.
//! - Value bytes: integers of any width and signedness are widened to 64-bit two's complement
//!   and written as 8 bytes little-endian; strings are their UTF-8 bytes; a null is the single
//!   byte `0xFF` (never valid UTF-8 on its own, never 8 bytes long, so it collides with no value).
//! - Bucket: `XXH64(value bytes, table seed) mod buckets`.
//! - A cross of columns (`cross` in the spec): `XXH64(h_1 ++ ... ++ h_k, table seed) mod
//!   buckets`, where `h_i = XXH64(value bytes of member i, table seed)` as 8 bytes little-endian,
//!   members in the feature's column order. Its table defaults to the column names joined by
//!   `_x_`.

use xxhash_rust::xxh64::xxh64;

/// The value bytes of a null.
pub const NULL_BYTES: [u8; 1] = [0xFF];

/// The hash seed of an embedding table.
pub fn table_seed(table: &str) -> u64 {
    xxh64(table.as_bytes(), 0)
}

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

/// XXH64 of the 8 little-endian bytes of `value`: the reference algorithm's short-input path
/// (one 8-byte lane, then the avalanche) written out, because integer ids are the hot path and
/// the generic function spends most of its time on length dispatch. Tested equal to `xxh64`.
#[inline]
pub fn xxh64_u64(value: u64, seed: u64) -> u64 {
    let lane = value
        .wrapping_mul(PRIME64_2)
        .rotate_left(31)
        .wrapping_mul(PRIME64_1);
    let mut acc = seed.wrapping_add(PRIME64_5).wrapping_add(8) ^ lane;
    acc = acc
        .rotate_left(27)
        .wrapping_mul(PRIME64_1)
        .wrapping_add(PRIME64_4);
    acc ^= acc >> 33;
    acc = acc.wrapping_mul(PRIME64_2);
    acc ^= acc >> 29;
    acc = acc.wrapping_mul(PRIME64_3);
    acc ^ (acc >> 32)
}

/// Bucket of a signed integer value (any width, sign-extended to 64 bits).
#[inline]
pub fn bucket_i64(value: i64, seed: u64, buckets: u64) -> u32 {
    (xxh64_u64(value as u64, seed) % buckets) as u32
}

/// Bucket of an unsigned integer value (same bytes as its 64-bit two's complement).
#[inline]
pub fn bucket_u64(value: u64, seed: u64, buckets: u64) -> u32 {
    (xxh64_u64(value, seed) % buckets) as u32
}

/// Bucket of a string value.
#[inline]
pub fn bucket_str(value: &str, seed: u64, buckets: u64) -> u32 {
    (xxh64(value.as_bytes(), seed) % buckets) as u32
}

/// Bucket of a null value.
#[inline]
pub fn bucket_null(seed: u64, buckets: u64) -> u32 {
    (hash_null(seed) % buckets) as u32
}

/// XXH64 of a null's value bytes.
#[inline]
pub fn hash_null(seed: u64) -> u64 {
    xxh64(&NULL_BYTES, seed)
}

/// Bucket of a cross (a tuple of values, in the feature's column order) from the XXH64 of each
/// member's value bytes under the table seed: `XXH64(h_1 ++ ... ++ h_k, seed) mod buckets`,
/// each `h_i` as 8 bytes little-endian. Hashing the members first keeps tuples unambiguous
/// (`("ab", "c")` and `("a", "bc")` differ) and each member's bytes as for a single feature.
pub fn bucket_cross(member_hashes: &[u64], seed: u64, buckets: u64) -> u32 {
    let mut bytes = [0u8; 64];
    let h = if member_hashes.len() <= 8 {
        for (dst, h) in bytes.chunks_exact_mut(8).zip(member_hashes) {
            dst.copy_from_slice(&h.to_le_bytes());
        }
        xxh64(&bytes[..member_hashes.len() * 8], seed)
    } else {
        let long: Vec<u8> = member_hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        xxh64(&long, seed)
    };
    (h % buckets) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_bucket_matches_the_python_xxhash_package() {
        // docs/hashing.md's example, computed with the `xxhash` package on PyPI:
        // ("q17", 42) in table "query_x_category_id" with 50,000 buckets is bucket 49731.
        let seed = table_seed("query_x_category_id");
        let h = [xxh64(b"q17", seed), xxh64_u64(42, seed)];
        assert_eq!(bucket_cross(&h, seed, 50_000), 49_731);
        // Order matters, and so do member boundaries.
        assert_ne!(
            bucket_cross(&[h[1], h[0]], seed, 1 << 30),
            bucket_cross(&h, seed, 1 << 30)
        );
        let split = |a: &str, b: &str| [xxh64(a.as_bytes(), seed), xxh64(b.as_bytes(), seed)];
        assert_ne!(
            bucket_cross(&split("ab", "c"), seed, 1 << 30),
            bucket_cross(&split("a", "bc"), seed, 1 << 30)
        );
        // More members than the stack buffer holds take the same rule.
        let many: Vec<u64> = (0..10).map(|v| xxh64_u64(v, seed)).collect();
        let bytes: Vec<u8> = many.iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(
            bucket_cross(&many, seed, 1000),
            (xxh64(&bytes, seed) % 1000) as u32
        );
    }

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        // From the xxHash reference test suite.
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn short_path_equals_the_generic_xxh64() {
        let mut rng = crate::rng::SplitMix64::new(5);
        for i in 0..10_000u64 {
            let v = if i < 100 {
                i.wrapping_sub(50)
            } else {
                rng.next_u64()
            };
            let seed = if i % 2 == 0 { 0 } else { rng.next_u64() };
            assert_eq!(
                xxh64_u64(v, seed),
                xxh64(&v.to_le_bytes(), seed),
                "{v} {seed}"
            );
        }
    }

    #[test]
    fn integer_widths_and_signedness_agree() {
        let seed = table_seed("item_id");
        assert_eq!(bucket_i64(7, seed, 1000), bucket_u64(7, seed, 1000));
        assert_eq!(bucket_i64(-1, seed, 1000), bucket_u64(u64::MAX, seed, 1000));
        assert_ne!(bucket_null(seed, 1 << 30), bucket_str("", seed, 1 << 30));
    }

    /// Fixed vectors shared with tests/python/test_hash_vectors.py, which recomputes them with
    /// the `xxhash` Python package from the rules above.
    #[test]
    fn pinned_vectors_from_fixture() {
        let text = include_str!("../../tests/fixtures/hash_vectors.json");
        let cases: Vec<serde_json::Value> = serde_json::from_str(text).expect("fixture parses");
        assert!(cases.len() >= 8);
        for case in cases {
            let table = case["table"].as_str().expect("table");
            let buckets = case["buckets"].as_u64().expect("buckets");
            let expected = case["bucket"].as_u64().expect("bucket") as u32;
            let seed = table_seed(table);
            assert_eq!(seed, case["seed"].as_u64().expect("seed"), "{case}");
            let got = match &case["value"] {
                serde_json::Value::Null => bucket_null(seed, buckets),
                serde_json::Value::String(s) => bucket_str(s, seed, buckets),
                v => bucket_i64(v.as_i64().expect("integer"), seed, buckets),
            };
            assert_eq!(got, expected, "{case}");
        }
    }
}
