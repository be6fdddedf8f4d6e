//! The ground-truth world behind `gen-data`: entity properties derived from the seed, the row
//! sampler, the five conditional towers and the intercept calibration. The formulas are
//! documented in the module docs of [`crate::synth`]; keep the two in step.

use super::TruthRates;
use crate::rng::SplitMix64;

/// Latent factor dimensions of users, items and categories.
pub(crate) const DIM: usize = 4;

/// Rows drawn (from their own stream) to calibrate the intercepts.
const CALIBRATION_ROWS: u64 = 1 << 16;
/// The stream of the calibration rows; data streams are `file << 32 | chunk`, with fewer than
/// 2^31 files, so they never reach it.
const CALIBRATION_STREAM: u64 = u64::MAX;

// Domains of the per-entity hashes (arbitrary distinct constants).
const D_USER: u64 = 0x5553_4552;
const D_ITEM: u64 = 0x4954_454d;
const D_CATEGORY: u64 = 0x4341_5447;
const D_QUERY: u64 = 0x5155_4552;

/// Where the shown item comes from: the query's category, the user's favourite category, or
/// global popularity.
const P_ITEM_FROM_QUERY_CATEGORY: f64 = 0.5;
const P_ITEM_FROM_FAVOURITE_CATEGORY: f64 = 0.2;
/// Share of history items drawn from the user's favourite category (the rest: global).
const P_HISTORY_FROM_FAVOURITE: f64 = 0.5;

/// Tower indices into [`Row::logits`] and [`Intercepts`].
pub(crate) const T_CLICK: usize = 0;
pub(crate) const T_FAV: usize = 1;
pub(crate) const T_ORDER_FAV: usize = 2;
pub(crate) const T_ORDER_NO_FAV: usize = 3;
pub(crate) const T_PAY: usize = 4;
/// Tower names, in index order (for metadata and logs).
pub(crate) const TOWERS: [&str; 5] = [
    "click",
    "favorite",
    "order_given_fav",
    "order_given_no_fav",
    "pay",
];

/// A well-mixed 64-bit hash of (seed, domain, id): the SplitMix64 output for a state built from
/// the three.
fn mix(seed: u64, domain: u64, id: u64) -> u64 {
    SplitMix64::new(
        seed ^ domain.wrapping_mul(0x9FB2_1C65_1E98_DF25) ^ id.wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    )
    .next_u64()
}

/// An approximately standard normal value from 64 random bits: Irwin-Hall sum of four 16-bit
/// uniforms, centred and scaled to unit variance (support ±3.46). Cheap and deterministic.
fn approx_normal(bits: u64) -> f64 {
    let s = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
    (s as f64 / 65_536.0 - 2.0) * 3f64.sqrt()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Walker/Vose alias tables for several discrete distributions laid end to end (segment `k`
/// covers `start[k]..start[k + 1]`). One 64-bit draw picks a slot and the coin.
#[derive(Debug, Default)]
pub(crate) struct Alias {
    /// Per slot: the probability (scaled to 2^32) of keeping the slot rather than taking its
    /// alias, and the alias (relative to its segment). Together: one cache line per draw.
    slots: Vec<(u32, u32)>,
    start: Vec<usize>,
}

impl Alias {
    /// Tables for one distribution per slice of `weights`.
    fn new<'a>(segments: impl IntoIterator<Item = &'a [f64]>) -> Self {
        let mut t = Alias {
            start: vec![0],
            ..Default::default()
        };
        let (mut small, mut large) = (Vec::new(), Vec::new());
        for weights in segments {
            let n = weights.len();
            let base = t.slots.len();
            t.slots.extend((0..n as u32).map(|i| (u32::MAX, i)));
            t.start.push(base + n);
            let sum: f64 = weights.iter().sum();
            if n == 0 || sum <= 0.0 {
                continue;
            }
            let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / sum).collect();
            small.clear();
            large.clear();
            for (i, &p) in scaled.iter().enumerate() {
                if p < 1.0 {
                    small.push(i)
                } else {
                    large.push(i)
                }
            }
            while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
                small.pop();
                large.pop();
                let keep = (scaled[s] * 4_294_967_296.0).min(u32::MAX as f64) as u32;
                t.slots[base + s] = (keep, l as u32);
                scaled[l] = (scaled[l] + scaled[s]) - 1.0;
                if scaled[l] < 1.0 {
                    small.push(l)
                } else {
                    large.push(l)
                }
            }
            // Whatever is left has probability 1 up to rounding: it keeps its slot.
        }
        t
    }

    fn len(&self, segment: usize) -> usize {
        self.start[segment + 1] - self.start[segment]
    }

    /// A draw from `segment` (which must be non-empty), as an index within the segment.
    fn sample(&self, segment: usize, bits: u64) -> usize {
        let base = self.start[segment];
        let n = self.len(segment);
        let m = bits as u128 * n as u128;
        let slot = (m >> 64) as usize;
        let coin = ((m as u64) >> 32) as u32;
        let (keep, alias) = self.slots[base + slot];
        if coin < keep { slot } else { alias as usize }
    }
}

/// What the generator needs to know about an item.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    factors: [f32; DIM],
    quality: f32,
    log_price: f32,
    /// log price relative to the category's mean log price.
    rel_price: f32,
}

/// A user, derived on the fly from the user id (no table).
struct User {
    factors: [f64; DIM],
    activity: f64,
    favourite_category: u32,
    age: u32,
}

/// One sampled row: observed features and the tower logits without intercepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub user: u64,
    pub item: u32,
    pub category: u32,
    pub query: u64,
    pub price: f32,
    pub age: f32,
    pub hour: u8,
    /// Feature part of each tower's logit (index `T_*`), before the intercept.
    pub logits: [f64; 5],
}

/// Marginal truth probabilities and the sampled labels of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outcome {
    /// P(click), P(favorite), P(order), P(pay), all marginal given the features.
    pub p: [f64; 4],
    /// click, favorite, order, pay.
    pub labels: [bool; 4],
}

/// Tower intercepts, calibrated to [`TruthRates`].
pub(crate) type Intercepts = [f64; 5];

/// The seeded world: entity tables, samplers and calibrated intercepts.
#[derive(Debug)]
pub(crate) struct World {
    seed: u64,
    users: u64,
    categories: u64,
    history_len: usize,
    /// Category of each item (also kept apart from `items` for cache-friendly history scans).
    item_category: Vec<u32>,
    items: Vec<Item>,
    /// Segment 0: items by global Zipf popularity (item id = popularity rank).
    item_popularity: Alias,
    /// Segment c: the items of category c, weighted by their global popularity; the slot
    /// indexes `category_items[c]`.
    category_popularity: Alias,
    category_items: Vec<u32>,
    category_start: Vec<usize>,
    /// Queries by Zipf popularity (query id = rank).
    query_popularity: Alias,
    /// Hour of day: a diurnal curve peaking in the evening.
    hours: Alias,
    pub intercepts: Intercepts,
}

impl World {
    /// Builds the world for `opts` (already validated) and calibrates the intercepts.
    pub(crate) fn new(opts: &super::GenOptions) -> Self {
        let seed = opts.seed;
        let n_items = opts.items as usize;
        let n_cat = opts.categories as usize;
        let s = opts.zipf_exponent;
        let category_factors: Vec<[f32; DIM]> = (0..n_cat as u64)
            .map(|c| {
                let mut r = SplitMix64::new(mix(seed, D_CATEGORY, c));
                std::array::from_fn(|_| approx_normal(r.next_u64()) as f32)
            })
            .collect();
        let category_price: Vec<f64> = (0..n_cat as u64)
            .map(|c| 3.0 + 0.8 * approx_normal(mix(seed, D_CATEGORY ^ 1, c)))
            .collect();
        let mut item_category = Vec::with_capacity(n_items);
        let mut items = Vec::with_capacity(n_items);
        for i in 0..n_items as u64 {
            let mut r = SplitMix64::new(mix(seed, D_ITEM, i));
            let c = r.below(n_cat as u64) as usize;
            let cf = category_factors[c];
            let factors =
                std::array::from_fn(|k| 0.6 * cf[k] + 0.8 * approx_normal(r.next_u64()) as f32);
            let quality = approx_normal(r.next_u64()) as f32;
            let rel = 0.5 * approx_normal(r.next_u64());
            item_category.push(c as u32);
            items.push(Item {
                factors,
                quality,
                log_price: (category_price[c] + rel) as f32,
                rel_price: rel as f32,
            });
        }
        let zipf = |n: usize| -> Vec<f64> { (0..n).map(|r| ((r + 1) as f64).powf(-s)).collect() };
        let item_weights = zipf(n_items);
        let item_popularity = Alias::new([item_weights.as_slice()]);
        // Items grouped by category, each group in id (= popularity) order.
        let mut category_start = vec![0usize; n_cat + 1];
        for &c in &item_category {
            category_start[c as usize + 1] += 1;
        }
        for c in 0..n_cat {
            category_start[c + 1] += category_start[c];
        }
        let mut fill = category_start.clone();
        let mut category_items = vec![0u32; n_items];
        for (i, &c) in item_category.iter().enumerate() {
            category_items[fill[c as usize]] = i as u32;
            fill[c as usize] += 1;
        }
        let grouped_weights: Vec<f64> = category_items
            .iter()
            .map(|&i| item_weights[i as usize])
            .collect();
        let category_popularity = Alias::new(
            (0..n_cat).map(|c| &grouped_weights[category_start[c]..category_start[c + 1]]),
        );
        drop(grouped_weights);
        drop(item_weights);
        let query_popularity = Alias::new([zipf(opts.queries as usize).as_slice()]);
        let hour_weights: Vec<f64> = (0..24)
            .map(|h| 1.0 + 0.8 * (std::f64::consts::TAU * (h as f64 - 20.0) / 24.0).cos())
            .collect();
        let hours = Alias::new([hour_weights.as_slice()]);
        let mut world = World {
            seed,
            users: opts.users,
            categories: opts.categories,
            history_len: opts.history_len,
            item_category,
            items,
            item_popularity,
            category_popularity,
            category_items,
            category_start,
            query_popularity,
            hours,
            intercepts: [0.0; 5],
        };
        world.intercepts = world.calibrate(&opts.rates);
        world
    }

    /// The category of a query (its intent): a hash of the query id.
    fn query_category(&self, q: u64) -> u32 {
        (mix(self.seed, D_QUERY, q) % self.categories) as u32
    }

    fn user(&self, u: u64) -> User {
        let mut r = SplitMix64::new(mix(self.seed, D_USER, u));
        let factors = std::array::from_fn(|_| approx_normal(r.next_u64()));
        let activity = approx_normal(r.next_u64());
        let favourite_category = r.below(self.categories) as u32;
        let age = 18 + r.below(48) as u32;
        User {
            factors,
            activity,
            favourite_category,
            age,
        }
    }

    /// An item from category `c` by popularity, or from all items when `c` has none.
    fn item_in(&self, c: u32, bits: u64) -> u32 {
        let c = c as usize;
        if self.category_popularity.len(c) == 0 {
            return self.item_popularity.sample(0, bits) as u32;
        }
        self.category_items[self.category_start[c] + self.category_popularity.sample(c, bits)]
    }

    /// Samples one row's features (history items are appended to `history`) and computes the
    /// feature part of each tower logit.
    pub(crate) fn sample_row(&self, rng: &mut SplitMix64, history: &mut Vec<i64>) -> Row {
        let user_id = rng.below(self.users);
        let user = self.user(user_id);
        let hour = self.hours.sample(0, rng.next_u64()) as u8;
        let query = self.query_popularity.sample(0, rng.next_u64()) as u64;
        let query_category = self.query_category(query);

        let len = rng.below(self.history_len as u64 + 1) as usize;
        let start = history.len();
        for _ in 0..len {
            let from_favourite = rng.next_f64() < P_HISTORY_FROM_FAVOURITE;
            let bits = rng.next_u64();
            let item = if from_favourite {
                self.item_in(user.favourite_category, bits)
            } else {
                self.item_popularity.sample(0, bits) as u32
            };
            history.push(item as i64);
        }

        let source = rng.next_f64();
        let bits = rng.next_u64();
        let item_id = if source < P_ITEM_FROM_QUERY_CATEGORY {
            self.item_in(query_category, bits)
        } else if source < P_ITEM_FROM_QUERY_CATEGORY + P_ITEM_FROM_FAVOURITE_CATEGORY {
            self.item_in(user.favourite_category, bits)
        } else {
            self.item_popularity.sample(0, bits) as u32
        };
        let item = self.items[item_id as usize];
        let category = self.item_category[item_id as usize];

        // Features of the truth model.
        let affinity = (0..DIM)
            .map(|k| user.factors[k] * item.factors[k] as f64)
            .sum::<f64>()
            / 2.0;
        let query_match = if category == query_category { 1.0 } else { 0.0 };
        let overlap = if len == 0 {
            0.0
        } else {
            history[start..]
                .iter()
                .filter(|&&h| self.item_category[h as usize] == category)
                .count() as f64
                / len as f64
        };
        let quality = item.quality as f64;
        let rel_price = item.rel_price as f64;
        let price_level = item.log_price as f64 - 3.0;
        let age = (user.age as f64 - 41.5) / 14.0;
        let evening = (std::f64::consts::TAU * (hour as f64 - 21.0) / 24.0).cos();
        let taste = user.factors[0]; // a user trait that only the pay tower uses

        let mut logits = [0.0; 5];
        logits[T_CLICK] = 0.9 * affinity
            + 1.2 * query_match
            + 0.6 * quality
            + 1.0 * overlap
            + 0.5 * user.activity
            + 0.3 * evening
            - 0.4 * rel_price;
        logits[T_FAV] = 0.9 * affinity + 0.4 * quality + 1.5 * overlap - 0.4 * age;
        logits[T_ORDER_FAV] = 0.4 * affinity + 0.6 * quality - 0.5 * price_level - 0.8 * rel_price
            + 0.3 * query_match;
        logits[T_ORDER_NO_FAV] =
            0.2 * affinity + 0.8 * quality - 0.7 * price_level - 1.0 * rel_price + 0.5 * overlap;
        logits[T_PAY] = 0.6 * age - 0.4 * price_level + 0.3 * evening + 0.3 * taste;

        Row {
            user: user_id,
            item: item_id,
            category,
            query,
            price: item.log_price.exp(),
            age: user.age as f32,
            hour,
            logits,
        }
    }

    /// Conditional tower probabilities of a row.
    fn towers(&self, row: &Row) -> [f64; 5] {
        std::array::from_fn(|t| sigmoid(self.intercepts[t] + row.logits[t]))
    }

    /// Marginal probabilities of a row and labels sampled down the funnel.
    pub(crate) fn outcome(&self, row: &Row, rng: &mut SplitMix64) -> Outcome {
        let t = self.towers(row);
        let p_click = t[T_CLICK];
        let p_fav = p_click * t[T_FAV];
        let p_order = p_click * (t[T_FAV] * t[T_ORDER_FAV] + (1.0 - t[T_FAV]) * t[T_ORDER_NO_FAV]);
        let p_pay = p_order * t[T_PAY];
        let click = rng.bernoulli(t[T_CLICK]);
        let (mut fav, mut order, mut pay) = (false, false, false);
        if click {
            fav = rng.bernoulli(t[T_FAV]);
            order = rng.bernoulli(if fav {
                t[T_ORDER_FAV]
            } else {
                t[T_ORDER_NO_FAV]
            });
            if order {
                pay = rng.bernoulli(t[T_PAY]);
            }
        }
        Outcome {
            p: [p_click, p_fav, p_order, p_pay],
            labels: [click, fav, order, pay],
        }
    }

    /// Solves each intercept so that the expected conditional rate over a calibration sample
    /// (weighted by the probability of reaching the tower) equals its target rate.
    fn calibrate(&self, rates: &TruthRates) -> Intercepts {
        let mut rng = SplitMix64::derive(self.seed, CALIBRATION_STREAM);
        let mut history = Vec::new();
        let logits: Vec<[f64; 5]> = (0..CALIBRATION_ROWS)
            .map(|_| {
                history.clear();
                self.sample_row(&mut rng, &mut history).logits
            })
            .collect();
        let column = |t: usize| -> Vec<f64> { logits.iter().map(|l| l[t]).collect() };
        let ones = vec![1.0; logits.len()];
        let mut a = [0.0; 5];
        let x = column(T_CLICK);
        a[T_CLICK] = solve_intercept(&x, &ones, rates.click);
        let p_click: Vec<f64> = x.iter().map(|x| sigmoid(a[T_CLICK] + x)).collect();
        let x = column(T_FAV);
        a[T_FAV] = solve_intercept(&x, &p_click, rates.favorite);
        let t_fav: Vec<f64> = x.iter().map(|x| sigmoid(a[T_FAV] + x)).collect();
        let w_fav: Vec<f64> = p_click.iter().zip(&t_fav).map(|(c, f)| c * f).collect();
        let w_no_fav: Vec<f64> = p_click
            .iter()
            .zip(&t_fav)
            .map(|(c, f)| c * (1.0 - f))
            .collect();
        let x_of = column(T_ORDER_FAV);
        a[T_ORDER_FAV] = solve_intercept(&x_of, &w_fav, rates.order_given_fav);
        let x_on = column(T_ORDER_NO_FAV);
        a[T_ORDER_NO_FAV] = solve_intercept(&x_on, &w_no_fav, rates.order_given_no_fav);
        let p_order: Vec<f64> = (0..logits.len())
            .map(|i| {
                w_fav[i] * sigmoid(a[T_ORDER_FAV] + x_of[i])
                    + w_no_fav[i] * sigmoid(a[T_ORDER_NO_FAV] + x_on[i])
            })
            .collect();
        a[T_PAY] = solve_intercept(&column(T_PAY), &p_order, rates.pay);
        a
    }
}

/// The `a` with sum_i w_i sigmoid(a + x_i) / sum_i w_i = target (0 < target < 1): safeguarded
/// Newton on a bracket (the left side is increasing in `a`).
fn solve_intercept(x: &[f64], w: &[f64], target: f64) -> f64 {
    let w_sum: f64 = w.iter().sum();
    if w_sum <= 0.0 {
        return (target / (1.0 - target)).ln();
    }
    let (mut lo, mut hi) = (-60.0f64, 60.0f64);
    let mut a =
        (target / (1.0 - target)).ln() - x.iter().zip(w).map(|(x, w)| x * w).sum::<f64>() / w_sum;
    a = a.clamp(lo, hi);
    for _ in 0..200 {
        let (mut f, mut d) = (0.0, 0.0);
        for (x, w) in x.iter().zip(w) {
            let p = sigmoid(a + x);
            f += w * p;
            d += w * p * (1.0 - p);
        }
        let g = f / w_sum - target;
        if g.abs() < 1e-12 * target {
            break;
        }
        if g > 0.0 {
            hi = a
        } else {
            lo = a
        }
        let newton = a - g / (d / w_sum);
        a = if d > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if hi - lo < 1e-12 {
            break;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_tables_follow_their_weights() {
        let w1 = [1.0, 2.0, 3.0, 4.0];
        let w2 = [5.0];
        let t = Alias::new([&w1[..], &[][..], &w2[..]]);
        assert_eq!((t.len(0), t.len(1), t.len(2)), (4, 0, 1));
        let mut rng = SplitMix64::new(9);
        let mut counts = [0u32; 4];
        let n = 200_000;
        for _ in 0..n {
            counts[t.sample(0, rng.next_u64())] += 1;
            assert_eq!(t.sample(2, rng.next_u64()), 0);
        }
        for (k, &c) in counts.iter().enumerate() {
            let expected = w1[k] / 10.0;
            assert!((c as f64 / n as f64 - expected).abs() < 0.005, "{counts:?}");
        }
    }

    #[test]
    fn approx_normal_has_unit_moments() {
        let mut rng = SplitMix64::new(1);
        let v: Vec<f64> = (0..100_000)
            .map(|_| approx_normal(rng.next_u64()))
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn solver_hits_weighted_targets() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64 / 100.0).sin() * 2.0).collect();
        let w: Vec<f64> = (0..1000).map(|i| (i % 7) as f64).collect();
        for target in [1e-4, 0.05, 0.5, 0.97] {
            let a = solve_intercept(&x, &w, target);
            let got = x
                .iter()
                .zip(&w)
                .map(|(x, w)| w * sigmoid(a + x))
                .sum::<f64>()
                / w.iter().sum::<f64>();
            assert!((got / target - 1.0).abs() < 1e-9, "{target} {got}");
        }
    }
}
