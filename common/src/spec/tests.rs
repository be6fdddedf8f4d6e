use super::*;

const MINIMAL: &str = r#"
version = 1
[data]
train = "file:///tmp/t/"
[[features.categorical]]
column = "user_id"
buckets = 1000
dim = 8
[funnel]
preset = "esm2"
"#;

fn issues(text: &str) -> Vec<ConfigIssue> {
    match Job::parse(text, "test.toml") {
        Err(Error::Config { issues, .. }) => issues,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("spec unexpectedly valid"),
    }
}

fn keys(text: &str) -> Vec<String> {
    issues(text).into_iter().map(|i| i.key).collect()
}

#[test]
fn minimal_spec_resolves_esm2_with_defaults() {
    let job = Job::parse(MINIMAL, "t").expect("valid");
    let names: Vec<&str> = job.funnel.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["click", "action", "purchase"]);
    let purchase = &job.funnel.stages[2];
    assert_eq!(purchase.given, Some(0));
    assert_eq!(purchase.branch_on, Some(1));
    assert_eq!(
        job.funnel.tower_count(),
        4,
        "ESM2: four towers for three targets"
    );
    assert_eq!(job.spec.train.batch_size, 1024);
    assert_eq!(job.spec.data.inconsistent_labels, InconsistentPolicy::Fail);
    assert_eq!(job.spec.towers.hidden, vec![256, 128]);
}

#[test]
fn every_preset_resolves_parents_first() {
    for preset in Preset::ALL {
        let text = MINIMAL.replace("\"esm2\"", &format!("\"{}\"", preset.name()));
        let job = Job::parse(&text, "t").expect("valid");
        for (i, s) in job.funnel.stages.iter().enumerate() {
            assert!(s.given.is_none_or(|g| g < i), "{preset:?}");
            assert!(s.branch_on.is_none_or(|b| b < i), "{preset:?}");
        }
    }
    let job = Job::parse(&MINIMAL.replace("esm2", "click-fav-order-pay"), "t").expect("valid");
    assert_eq!(job.funnel.tower_count(), 5);
    // pay's nearest labelled ancestor is order; order's is click (branching is not ancestry).
    assert_eq!(job.funnel.labelled_ancestor(3), Some(2));
    assert_eq!(job.funnel.labelled_ancestor(2), Some(0));
}

#[test]
fn preset_labels_can_be_renamed_and_or_ed() {
    let text =
        format!("{MINIMAL}labels = {{ action = [\"favorite\", \"cart\"], purchase = \"buy\" }}\n");
    let job = Job::parse(&text, "t").expect("valid");
    assert_eq!(job.funnel.stages[1].label_columns, ["favorite", "cart"]);
    assert_eq!(job.funnel.stages[1].label_key, "funnel.labels.action");
    assert_eq!(job.funnel.stages[2].label_columns, ["buy"]);
    let bad = format!("{MINIMAL}labels = {{ order = \"o\" }}\n");
    assert_eq!(keys(&bad), ["funnel.labels.order"]);
}

#[test]
fn unknown_keys_and_wrong_types_name_their_key_path() {
    let text = MINIMAL.replace("dim = 8", "dim = 8\nbukets = 3");
    let found = issues(&text);
    assert_eq!(found[0].key, "features.categorical[0].bukets");
    assert!(found[0].message.contains("bukets"), "{found:?}");

    let mut text = MINIMAL.to_string();
    for i in 1..=3 {
        text += &format!("[[features.categorical]]\ncolumn = \"c{i}\"\nbuckets = 10\ndim = 4\n");
    }
    let text = {
        // Make the fourth categorical feature's buckets a string.
        let pos = text.rfind("buckets = 10").expect("present");
        format!(
            "{}buckets = \"many\"{}",
            &text[..pos],
            &text[pos + "buckets = 10".len()..]
        )
    };
    assert_eq!(keys(&text), ["features.categorical[3].buckets"]);
}

#[test]
fn value_checks_collect_every_problem() {
    let text = r#"
version = 1
[data]
train = ""
[[features.categorical]]
column = "a"
buckets = 0
dim = 8
table = "t"
[[features.categorical]]
column = "b"
buckets = 10
dim = 4
table = "t"
[[features.numeric]]
column = "a"
transform = "standardize"
[funnel]
preset = "esmm"
[loss]
weights = { click = -1.0, nope = 1.0 }
"#;
    let mut found = keys(text);
    found.sort();
    assert_eq!(
        found,
        [
            "data.train",
            "features.categorical[0].buckets",
            "features.categorical[1].table",
            "features.numeric[0].column",
            "features.numeric[0].mean",
            "loss.weights.click",
            "loss.weights.nope",
        ]
    );
}

#[test]
fn explicit_stages_are_checked() {
    let base = MINIMAL.replace("preset = \"esm2\"\n", "");
    let stage = |name: &str, extra: &str| {
        format!("[[funnel.stages]]\nname = \"{name}\"\nlabel = \"{name}\"\n{extra}")
    };
    let ok = format!(
        "{base}{}{}{}",
        stage("click", ""),
        stage("cart", "given = \"click\"\n"),
        stage("buy", "given = \"click\"\nbranch_on = \"cart\"\n")
    );
    assert_eq!(Job::parse(&ok, "t").expect("valid").funnel.tower_count(), 4);

    let unknown = format!(
        "{base}{}{}",
        stage("click", ""),
        stage("buy", "given = \"klick\"\n")
    );
    assert_eq!(keys(&unknown), ["funnel.stages[1].given"]);

    let bad_branch = format!(
        "{base}{}{}{}",
        stage("click", ""),
        stage("cart", "given = \"click\"\n"),
        stage("buy", "branch_on = \"cart\"\n")
    );
    assert_eq!(keys(&bad_branch), ["funnel.stages[2].branch_on"]);

    let cycle = format!(
        "{base}{}{}",
        stage("a", "given = \"b\"\n"),
        stage("b", "given = \"a\"\n")
    );
    assert_eq!(keys(&cycle), ["funnel.stages"]);

    let both = format!("{MINIMAL}{}", stage("click", ""));
    assert_eq!(keys(&both), ["funnel.stages"]);
}

#[test]
fn version_and_label_leaks_are_refused() {
    assert_eq!(
        keys(&MINIMAL.replace("version = 1", "version = 2")),
        ["version"]
    );
    let leak = MINIMAL.replace("column = \"user_id\"", "column = \"click\"");
    assert_eq!(keys(&leak), ["features"]);
}

#[test]
fn synthetic_job_spec_is_valid() {
    let job = Job::parse(&synthetic_job_toml("s3://b/data", "s3://b/out"), "t").expect("valid");
    assert_eq!(job.spec.data.train, "s3://b/data/train/");
    assert_eq!(job.funnel.preset, Some("click-fav-order-pay"));
}

/// Every key of a spec with all defaults filled in (and of the synthetic job's tables, which
/// set optional ones) has a row in docs/config.md: "every key documented" checked, not hoped.
#[test]
fn every_key_is_documented_in_config_md() {
    let docs = include_str!("../../../docs/config.md");
    let mut missing = Vec::new();
    for text in [
        MINIMAL.to_string(),
        synthetic_job_toml("file:///tmp/d/", "file:///tmp/o/"),
    ] {
        let job = Job::parse(&text, "t").expect("valid");
        let value = toml::Value::try_from(&job.spec).expect("serialisable");
        collect_keys(&value, "", &mut missing, docs);
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "keys without a row in docs/config.md: {missing:?}"
    );
}

fn collect_keys(v: &toml::Value, path: &str, missing: &mut Vec<String>, docs: &str) {
    let tables: Vec<&toml::Table> = match v {
        toml::Value::Table(t) => vec![t],
        toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_table).collect(),
        _ => return,
    };
    for t in tables {
        for (key, value) in t {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            // Tables are documented by their headings; a row may name several keys
            // (`mean`, `std`).
            let is_table = value.is_table()
                || value
                    .as_array()
                    .is_some_and(|a| a.first().is_some_and(toml::Value::is_table));
            let row = [
                format!("| `{key}` |"),
                format!("| `{key}`, "),
                format!(", `{key}` |"),
            ];
            let heading = [format!("[[{full}]]"), format!("[{full}]")];
            let documented = if is_table {
                true
            } else {
                row.iter()
                    .chain(&heading)
                    .any(|r| docs.contains(r.as_str()))
            };
            if !documented {
                missing.push(full.clone());
            }
            collect_keys(value, &full, missing, docs);
        }
    }
}

#[test]
fn lr_schedules_follow_pytorchs_per_epoch_schedulers() {
    let with = |extra: &str| {
        Job::parse(&format!("{MINIMAL}[optimizer]\n{extra}"), "t")
            .expect("valid")
            .spec
            .optimizer
    };
    let constant = with("");
    assert_eq!(constant.lr_schedule, LrSchedule::Constant);
    assert!((0..5).all(|e| constant.lr_factor(e, 4) == 1.0));

    // ExponentialLR(gamma): gamma^epoch.
    let exp = with("lr_schedule = \"exponential\"\nlr_gamma = 0.5");
    let got: Vec<f64> = (0..4).map(|e| exp.lr_factor(e, 4)).collect();
    assert_eq!(got, [1.0, 0.5, 0.25, 0.125]);

    // CosineAnnealingLR(T_max = epochs, eta_min = 0): (1 + cos(pi e / E)) / 2, full rate at
    // the first epoch, half way at E / 2; past the end it stays at 0 rather than rising again.
    let cos = with("lr_schedule = \"cosine\"");
    let f = |e| cos.lr_factor(e, 4);
    assert_eq!(f(0), 1.0);
    assert!((f(1) - 0.853_553_390_593_273_8).abs() < 1e-15, "{}", f(1));
    assert!((f(2) - 0.5).abs() < 1e-15);
    assert!(f(3) > 0.0 && f(3) < 0.15);
    assert!(f(4).abs() < 1e-15 && f(9).abs() < 1e-15);
}

#[test]
fn lr_gamma_is_checked_against_its_schedule() {
    let opt = |extra: &str| format!("{MINIMAL}[optimizer]\n{extra}");
    let gamma = ["optimizer.lr_gamma"];
    assert_eq!(keys(&opt("lr_schedule = \"exponential\"")), gamma);
    for bad in ["0.0", "1.5", "-0.5", "nan"] {
        let text = opt(&format!("lr_schedule = \"exponential\"\nlr_gamma = {bad}"));
        assert_eq!(keys(&text), gamma, "lr_gamma = {bad}");
    }
    assert_eq!(
        keys(&opt("lr_schedule = \"cosine\"\nlr_gamma = 0.5")),
        gamma
    );
    assert_eq!(keys(&opt("lr_gamma = 0.5")), gamma);
    assert_eq!(
        keys(&opt("lr_schedule = \"linear\"")),
        ["optimizer.lr_schedule"]
    );
    Job::parse(&opt("lr_schedule = \"exponential\"\nlr_gamma = 1.0"), "t").expect("valid");
}

#[test]
fn crosses_are_checked_and_get_their_own_table() {
    let cross = |extra: &str| {
        format!(
            "{MINIMAL}[[features.categorical]]\ncolumn = \"user_id\"\n{extra}\nbuckets = 100\ndim = 8\n"
        )
    };
    let job = Job::parse(&cross("cross = [\"query\"]"), "t").expect("valid");
    let c = &job.spec.features.categorical[1];
    assert_eq!(c.columns().collect::<Vec<_>>(), ["user_id", "query"]);
    assert_eq!(c.table_name(), "user_id_x_query");
    assert_eq!(job.spec.features.categorical[0].table_name(), "user_id");

    let key = ["features.categorical[1].cross"];
    assert_eq!(keys(&cross("cross = [\"user_id\"]")), key);
    assert_eq!(keys(&cross("cross = [\"query\", \"query\"]")), key);
    assert_eq!(keys(&cross("cross = [\" \"]")), key);
    // The same tuple twice.
    let twice = format!(
        "{}[[features.categorical]]\ncolumn = \"user_id\"\ncross = [\"query\"]\nbuckets = 100\n\
         dim = 8\ntable = \"other\"\n",
        cross("cross = [\"query\"]")
    );
    assert_eq!(keys(&twice), ["features.categorical[2].cross"]);
    // A label inside a cross leaks it like any feature.
    let leak = cross("cross = [\"click\"]").replace("preset = \"esm2\"", "preset = \"esmm\"");
    assert_eq!(keys(&leak), ["features"]);
}
