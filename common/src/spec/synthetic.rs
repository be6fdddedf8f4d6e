//! The job spec that matches `funnel gen-data` output: written next to generated data so the
//! demo and users start from a spec that validates.

/// A job spec for gen-data output under `data_url` (which holds `train/` and `eval/`).
pub fn synthetic_job_toml(data_url: &str, output_url: &str) -> String {
    let data = data_url.trim_end_matches('/');
    format!(
        r#"# Job spec for `funnel gen-data` output; every key is documented in docs/config.md.
version = 1
name = "synthetic-funnel"
output = "{output_url}"

[data]
train = "{data}/train/"
eval = "{data}/eval/"
# Generated labels always respect the funnel; real logs may not (see docs/config.md).
inconsistent_labels = "fail"
bad_rows = "fail"

[[features.categorical]]
column = "user_id"
buckets = 100000
dim = 16

[[features.categorical]]
column = "item_id"
buckets = 100000
dim = 16
table = "items"

[[features.categorical]]
column = "category_id"
buckets = 2000
dim = 8

[[features.categorical]]
column = "query"
buckets = 50000
dim = 16

[[features.categorical]]
column = "hour"
buckets = 24
dim = 4

[[features.list]]
column = "recent_items"
buckets = 100000
dim = 16
max_len = 20
table = "items"

[[features.numeric]]
column = "price"
transform = "log1p"

[[features.numeric]]
column = "user_age"
transform = "standardize"
# gen-data draws ages uniformly from 18..65: mean 41.5, std 13.6.
mean = 41.5
std = 13.6
fill_null = 0.0

[funnel]
preset = "click-fav-order-pay"

[towers]
kind = "mlp"
hidden = [256, 128]

[optimizer]
dense = "adam"
lr = 0.001
sparse = "lazy-adam"

[loss]
# "fixed", "gradnorm", "dwa" or "uwl" (docs/weighting.md).
weighting = "fixed"

[train]
batch_size = 1024
epochs = 2
seed = 42
"#
    )
}
