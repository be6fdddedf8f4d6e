//! Correctly rounded floating-point sums (Shewchuk 1997, the algorithm behind Python's
//! `math.fsum`). The result is the exact sum of the inputs rounded once to the nearest f64, so it
//! depends only on the multiset of inputs, never on their order: metrics summed over batches or
//! merged across workers in any order give bit-identical values.

/// A running sum kept exactly as a list of non-overlapping partials.
///
/// Finite inputs whose exact sum stays below `f64::MAX` in magnitude are summed exactly (the
/// metrics feed it probabilities and clipped log losses, far inside that range). Non-finite inputs
/// are added plainly to a separate term, so an infinity or NaN shows in the result as it would in
/// a naive sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExactSum {
    /// Non-overlapping, increasing in magnitude; their exact sum is the running total.
    partials: Vec<f64>,
    /// Plain sum of the non-finite inputs (0.0 when there were none).
    special: f64,
}

impl ExactSum {
    /// An empty sum (0.0).
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `x` exactly.
    pub(crate) fn add(&mut self, x: f64) {
        if !x.is_finite() {
            self.special += x;
            return;
        }
        let mut x = x;
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            // Two-sum: hi + lo == x + y exactly, since |x| >= |y|.
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// The exact sum rounded once to the nearest f64 (ties to even).
    pub(crate) fn value(&self) -> f64 {
        if self.special != 0.0 || self.special.is_nan() {
            return self.special;
        }
        let p = &self.partials;
        let mut n = p.len();
        if n == 0 {
            return 0.0;
        }
        // Add from the largest partial down until the first inexact addition.
        n -= 1;
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let y_rounded = hi - x;
            lo = y - y_rounded;
            if lo != 0.0 {
                break;
            }
        }
        // Round half to even correctly: if the rest of the partials push `lo` past the halfway
        // point, `hi` must move one step in `lo`'s direction.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

impl Extend<f64> for ExactSum {
    fn extend<I: IntoIterator<Item = f64>>(&mut self, iter: I) {
        for x in iter {
            self.add(x);
        }
    }
}

/// The correctly rounded sum of `values`.
pub(crate) fn exact_sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut s = ExactSum::new();
    s.extend(values);
    s.value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn sums_that_naive_addition_gets_wrong() {
        assert_eq!(exact_sum([1e16, 1.0, -1e16]), 1.0);
        assert_eq!(exact_sum([0.1; 10]), 1.0);
        assert_ne!([0.1; 10].iter().sum::<f64>(), 1.0);
        assert_eq!(exact_sum([1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(exact_sum([]), 0.0);
        assert_eq!(exact_sum([-0.5]), -0.5);
    }

    #[test]
    fn rounds_half_to_even() {
        // 1 + 2^-53 is exactly halfway between 1 and the next f64: ties to even (1.0).
        let half_ulp = f64::EPSILON / 2.0;
        assert_eq!(exact_sum([1.0, half_ulp]), 1.0);
        // A tiny extra beyond the halfway point must round up, though the two-sum of the two
        // largest partials alone would round to even.
        assert_eq!(exact_sum([1.0, half_ulp, 1e-30]), 1.0 + f64::EPSILON);
        assert_eq!(exact_sum([1e-30, half_ulp, 1.0]), 1.0 + f64::EPSILON);
        assert_eq!(exact_sum([1.0, half_ulp, -1e-30]), 1.0);
    }

    /// Values k x 2^-40 with |k| < 2^52 are summed exactly in i128; converting that integer to
    /// f64 rounds once (to nearest, ties to even), and scaling by a power of two is exact.
    #[test]
    fn matches_integer_arithmetic_in_every_order() {
        let mut rng = SplitMix64::new(7);
        for n in [1usize, 2, 10, 1000, 20_000] {
            let mut values: Vec<f64> = (0..n)
                .map(|_| {
                    let k = rng.below(1 << 52) as i64 - (1 << 51);
                    let scale = [1.0, 1e-9, 1e9][rng.below(3) as usize];
                    ((k as f64 * scale).round()) * 2f64.powi(-40)
                })
                .collect();
            let exact: i128 = values.iter().map(|v| (v * 2f64.powi(40)) as i128).sum();
            let expected = exact as f64 * 2f64.powi(-40);
            assert_eq!(exact_sum(values.iter().copied()), expected, "n={n}");
            rng.shuffle(&mut values);
            assert_eq!(exact_sum(values.iter().copied()), expected, "n={n}");
            values.reverse();
            assert_eq!(exact_sum(values.iter().copied()), expected, "n={n}");
        }
    }

    #[test]
    fn order_never_changes_the_bits() {
        let mut rng = SplitMix64::new(3);
        let mut values: Vec<f64> = (0..5000)
            .map(|_| rng.next_f64().powi(8) * if rng.bernoulli(0.5) { 1e-12 } else { 30.0 })
            .collect();
        let first = exact_sum(values.iter().copied());
        for _ in 0..5 {
            rng.shuffle(&mut values);
            assert_eq!(exact_sum(values.iter().copied()).to_bits(), first.to_bits());
        }
    }

    #[test]
    fn non_finite_inputs_show() {
        assert!(exact_sum([1.0, f64::NAN, 2.0]).is_nan());
        assert_eq!(exact_sum([1.0, f64::INFINITY]), f64::INFINITY);
        assert!(exact_sum([f64::INFINITY, f64::NEG_INFINITY]).is_nan());
    }
}
