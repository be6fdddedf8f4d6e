//! The report's plots, drawn with plotters' SVG backend into strings (the caller writes them
//! through the object store, so s3:// outputs get them too).
//!
//! Every plot has epochs (1-based) on x. A series is one polyline of stroke width 2 with a
//! circle per point, in a colour of its own; reference lines (oracle AUC, calibration 1.0) are
//! dashed and of width 1, so series and references can be told apart in the SVG.

use super::history::{EpochRecord, eval_row, lookup, task_names};
use crate::WorkerError;
use funnel_common::oracle::Oracle;
use plotters::prelude::*;

/// Size of each plot in pixels.
const SIZE: (u32, u32) = (720, 420);

/// Series colours (matplotlib's tab10), cycled.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a plot: (epoch, value) points, missing epochs left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (1-based epoch, value).
    pub points: Vec<(f64, f64)>,
}

/// A dashed horizontal reference line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Legend text.
    pub name: String,
    /// Its height.
    pub y: f64,
    /// The series whose colour it takes (None: black).
    pub series: Option<usize>,
}

/// One plot: what to draw and the file it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// File name under `<output>/report/`.
    pub file: &'static str,
    /// Title.
    pub title: &'static str,
    /// Label of the y axis.
    pub y_label: &'static str,
    /// The lines.
    pub series: Vec<Series>,
    /// Dashed reference lines.
    pub references: Vec<Reference>,
}

impl Plot {
    /// Whether there is anything to draw.
    pub fn is_empty(&self) -> bool {
        self.series.iter().all(|s| s.points.is_empty())
    }
}

/// The report's plots, in page order (see docs/report.md). Plots without data are kept (empty)
/// so the page can say so.
pub fn plots(history: &[EpochRecord], oracle: &Oracle) -> Vec<Plot> {
    let tasks = task_names(history);
    let per_task = |f: &dyn Fn(&EpochRecord, &str) -> Option<f64>| -> Vec<Series> {
        tasks
            .iter()
            .map(|t| Series {
                name: t.clone(),
                points: points(history, |r| f(r, t)),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let eval_targets: Vec<String> = tasks
        .iter()
        .filter(|t| history.iter().any(|r| eval_row(&r.targets, t).is_some()))
        .cloned()
        .collect();
    let auc = per_task(&|r, t| eval_row(&r.targets, t).and_then(|e| e.auc));
    let oracle_lines = auc
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            oracle.auc(&s.name).map(|y| Reference {
                name: format!("oracle {}", s.name),
                y,
                series: Some(i),
            })
        })
        .collect();
    let calibration = per_task(&|r, t| eval_row(&r.targets, t).and_then(|e| e.calibration));
    let calibration_lines = if eval_targets.is_empty() {
        Vec::new()
    } else {
        vec![Reference {
            name: "calibrated (1.0)".into(),
            y: 1.0,
            series: None,
        }]
    };
    vec![
        Plot {
            file: "loss.svg",
            title: "Training loss per task",
            y_label: "mean task loss (BCE)",
            series: per_task(&|r, t| lookup(&r.task_losses, t)),
            references: Vec::new(),
        },
        Plot {
            file: "auc.svg",
            title: "Eval AUC per target (dashed: oracle)",
            y_label: "AUC",
            series: auc,
            references: oracle_lines,
        },
        Plot {
            file: "calibration.svg",
            title: "Calibration: mean prediction / mean label",
            y_label: "calibration",
            series: calibration,
            references: calibration_lines,
        },
        Plot {
            file: "weights.svg",
            title: "Task weights per epoch",
            y_label: "weight",
            series: per_task(&|r, t| lookup(&r.weights, t)),
            references: Vec::new(),
        },
        Plot {
            file: "throughput.svg",
            title: "Training samples per second",
            y_label: "samples/s",
            series: vec![Series {
                name: "train".into(),
                points: points(history, |r| r.rows_per_s),
            }],
            references: Vec::new(),
        },
    ]
}

/// (1-based epoch, value) for every epoch that has a finite value.
fn points(history: &[EpochRecord], f: impl Fn(&EpochRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|r| {
            f(r).filter(|v| v.is_finite())
                .map(|v| (r.epoch as f64 + 1.0, v))
        })
        .collect()
}

/// The y range: every point and reference, padded; a flat range is widened around its value.
fn y_range(plot: &Plot) -> (f64, f64) {
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(plot.references.iter().map(|r| r.y));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
        (lo.min(y), hi.max(y))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    (lo - pad, hi + pad)
}

/// Draws `plot` over `epochs` epochs as an SVG document.
pub fn render(plot: &Plot, epochs: u64) -> Result<String, WorkerError> {
    let fail = |e: &dyn std::fmt::Display| WorkerError::Report(format!("{}: {e}", plot.file));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let (x0, x1) = (0.5, epochs.max(1) as f64 + 0.5);
        let (y0, y1) = y_range(plot);
        let mut chart = ChartBuilder::on(&root)
            .caption(plot.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| fail(&e))?;
        // Only whole epochs get a label.
        let epoch_label = |x: &f64| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        let y_label = |y: &f64| {
            if y.abs() >= 1000.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.3}")
            }
        };
        chart
            .configure_mesh()
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .x_desc("epoch")
            .y_desc(plot.y_label)
            .x_labels((epochs as usize).clamp(2, 12))
            .x_label_formatter(&epoch_label)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, s) in plot.series.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(
                    LineSeries::new(s.points.iter().copied(), c.stroke_width(2)).point_size(3),
                )
                .map_err(|e| fail(&e))?
                .label(s.name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], c.filled()));
        }
        for r in &plot.references {
            let c = r.series.map_or(BLACK, colour);
            let style = c.stroke_width(1);
            chart
                .draw_series(DashedLineSeries::new([(x0, r.y), (x1, r.y)], 6, 4, style))
                .map_err(|e| fail(&e))?
                .label(r.name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}
