//! The report's `index.html`: self-contained apart from the SVG plots beside it (inline CSS,
//! no script, nothing fetched from elsewhere), so it can be opened from a bucket or a
//! laptop alike.

use super::history::{EpochRecord, EvalRow, eval_row, lookup, task_names};
use super::plots::Plot;
use funnel_common::oracle::Oracle;
use std::fmt::Write;

/// What the page says about the job beside the history.
#[derive(Debug, Clone)]
pub struct PageInfo<'a> {
    /// Job name (from the spec), or a placeholder when no spec was found.
    pub job: &'a str,
    /// The output URL.
    pub output: &'a str,
    /// Where the spec that located the eval data came from.
    pub spec_source: &'a str,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f2f2f2}td.name{text-align:left}\
figure{display:inline-block;margin:0 1em 1em 0}figure img{border:1px solid #ddd}\
dt{font-weight:bold;float:left;clear:left;width:9em}dd{margin-left:10em}";

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number with 4 decimals, or a dash when absent.
pub fn f4(v: Option<f64>) -> String {
    v.map_or_else(|| "&ndash;".to_string(), |x| format!("{x:.4}"))
}

fn int(v: Option<u64>) -> String {
    v.map_or_else(|| "&ndash;".to_string(), |x| x.to_string())
}

/// The whole page.
pub fn page(info: &PageInfo, history: &[EpochRecord], oracle: &Oracle, plots: &[Plot]) -> String {
    let mut h = String::new();
    let job = escape(info.job);
    let first = history.first().map_or(0, |r| r.epoch + 1);
    let last = history.last().map_or(0, |r| r.epoch + 1);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Funnel run report: {job}</title><style>{STYLE}</style></head><body>\n\
         <h1>Run report: {job}</h1>\n<dl>\
         <dt>Job</dt><dd>{job}</dd>\
         <dt>Output</dt><dd><code>{}</code></dd>\
         <dt>Epochs</dt><dd>{} (epochs {first} to {last}), {} steps</dd>\
         <dt>Job spec</dt><dd>{}</dd>\
         <dt>Oracle</dt><dd>{}</dd></dl>\n",
        escape(info.output),
        history.len(),
        int(history.last().and_then(|r| r.step)),
        escape(info.spec_source),
        oracle_summary(oracle),
    );
    h.push_str("<h2>Plots</h2>\n");
    for p in plots {
        if p.is_empty() {
            let _ = writeln!(h, "<p>{}: nothing recorded.</p>", escape(p.title));
        } else {
            let _ = writeln!(
                h,
                "<figure><img src=\"{0}\" alt=\"{1}\" width=\"720\" height=\"420\">\
                 <figcaption><a href=\"{0}\">{0}</a></figcaption></figure>",
                p.file,
                escape(p.title)
            );
        }
    }
    training_table(&mut h, history);
    eval_table(&mut h, history, oracle);
    h.push_str("</body></html>\n");
    h
}

fn oracle_summary(oracle: &Oracle) -> String {
    match oracle {
        Oracle::Computed { eval, targets } => {
            let each: Vec<String> = targets
                .iter()
                .map(|t| format!("{} {}", escape(&t.stage), f4(t.auc)))
                .collect();
            format!(
                "{} (truth_p_&lt;stage&gt; columns of <code>{}</code>)",
                each.join(", "),
                escape(eval)
            )
        }
        Oracle::Unavailable(why) => format!("no oracle: {}", escape(why)),
    }
}

fn training_table(h: &mut String, history: &[EpochRecord]) {
    let tasks = task_names(history);
    h.push_str(
        "<h2>Training</h2>\n<table><tr><th>epoch</th><th>step</th><th>rows</th>\
                <th>seconds</th><th>samples/s</th><th>loss</th>",
    );
    for t in &tasks {
        let _ = write!(h, "<th>loss {}</th>", escape(t));
    }
    for t in &tasks {
        let _ = write!(h, "<th>weight {}</th>", escape(t));
    }
    h.push_str("</tr>\n");
    for r in history {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            r.epoch + 1,
            int(r.step),
            int(r.rows),
            r.seconds
                .map_or_else(|| "&ndash;".into(), |s| format!("{s:.1}")),
            r.rows_per_s
                .map_or_else(|| "&ndash;".into(), |s| format!("{s:.0}")),
            f4(r.loss)
        );
        for t in &tasks {
            let _ = write!(h, "<td>{}</td>", f4(lookup(&r.task_losses, t)));
        }
        for t in &tasks {
            let _ = write!(h, "<td>{}</td>", f4(lookup(&r.weights, t)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn eval_table(h: &mut String, history: &[EpochRecord], oracle: &Oracle) {
    h.push_str("<h2>Evaluation</h2>\n");
    if history
        .iter()
        .all(|r| r.targets.is_empty() && r.conditional.is_empty())
    {
        h.push_str("<p>No evaluation recorded (the job has no <code>data.eval</code>).</p>\n");
        return;
    }
    h.push_str(
        "<table><tr><th>epoch</th><th>target</th><th>AUC</th><th>oracle AUC</th>\
         <th>oracle &minus; AUC</th><th>logloss</th><th>calibration</th><th>rows</th>\
         <th>positives</th></tr>\n",
    );
    let row = |h: &mut String, epoch: u64, e: &EvalRow, oracle_auc: Option<f64>| {
        let gap = oracle_auc.zip(e.auc).map(|(o, a)| o - a);
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            epoch + 1,
            escape(&e.name),
            f4(e.auc),
            f4(oracle_auc),
            f4(gap),
            f4(e.logloss),
            f4(e.calibration),
            int(e.rows),
            int(e.positives)
        );
    };
    let tasks = task_names(history);
    for r in history {
        for t in &tasks {
            if let Some(e) = eval_row(&r.targets, t) {
                row(h, r.epoch, e, oracle.auc(t));
            }
        }
        for c in &r.conditional {
            row(h, r.epoch, c, None);
        }
    }
    h.push_str("</table>\n");
}
