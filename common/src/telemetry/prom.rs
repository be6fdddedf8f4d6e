//! The Prometheus text exposition format (version 0.0.4), written by hand: a handful of
//! counters and gauges do not need a metrics registry, and a pure writer is easy to test.
//!
//! Each family is written once with its `# HELP` and `# TYPE` lines, then one sample per label
//! set. Label values are escaped (`\`, `"`, newline); names are checked against the metric name
//! grammar, since a bad name makes Prometheus reject the whole scrape.

use std::fmt::Write as _;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A scrape body under construction.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// An empty body.
    pub fn new() -> Self {
        Self::default()
    }

    /// A family without labels and its one sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help, [(Vec::<(&str, &str)>::new(), value)])
    }

    /// A family and its samples, each with its labels (`[(label, value)]`).
    pub fn family<'a, L, I>(&mut self, name: &str, kind: Kind, help: &str, samples: I) -> &mut Self
    where
        L: IntoIterator<Item = (&'a str, &'a str)>,
        I: IntoIterator<Item = (L, f64)>,
    {
        debug_assert!(valid_name(name), "metric name {name:?}");
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            let mut first = true;
            for (k, v) in labels {
                debug_assert!(valid_name(k), "label name {k:?}");
                self.text.push(if first { '{' } else { ',' });
                first = false;
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            if !first {
                self.text.push('}');
            }
            let _ = writeln!(self.text, " {}", number(value));
        }
        self
    }

    /// The body (`text/plain; version=0.0.4`).
    pub fn finish(self) -> String {
        self.text
    }
}

/// The content type of the body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prometheus' spellings of the special values.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_samples() {
        let mut e = Exposition::new();
        e.single(
            "funnel_steps_total",
            Kind::Counter,
            "Steps committed.",
            12.0,
        );
        e.family(
            "funnel_task_loss",
            Kind::Gauge,
            "Mean loss per task.",
            [
                (vec![("task", "click")], 0.5),
                (vec![("task", "pay")], 0.25),
            ],
        );
        assert_eq!(
            e.finish(),
            "# HELP funnel_steps_total Steps committed.\n\
             # TYPE funnel_steps_total counter\n\
             funnel_steps_total 12\n\
             # HELP funnel_task_loss Mean loss per task.\n\
             # TYPE funnel_task_loss gauge\n\
             funnel_task_loss{task=\"click\"} 0.5\n\
             funnel_task_loss{task=\"pay\"} 0.25\n"
        );
    }

    #[test]
    fn label_values_are_escaped_and_special_values_spelled() {
        let mut e = Exposition::new();
        e.family(
            "x",
            Kind::Gauge,
            "a \\ help\nline",
            [
                (vec![("w", "a\"b\\c\nd"), ("k", "v")], f64::NAN),
                (vec![("w", "e")], f64::INFINITY),
            ],
        );
        let text = e.finish();
        assert!(text.contains("# HELP x a \\\\ help\\nline\n"));
        assert!(text.contains("x{w=\"a\\\"b\\\\c\\nd\",k=\"v\"} NaN\n"));
        assert!(text.contains("x{w=\"e\"} +Inf\n"));
    }

    #[test]
    fn names_follow_the_grammar() {
        assert!(valid_name("funnel_worker_rows_total"));
        assert!(valid_name("a:b_c9"));
        assert!(!valid_name("9a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
