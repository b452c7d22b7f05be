//! PNG line plots (plotters, bitmap backend; text in the DejaVu font embedded in the binary, so
//! no system fonts are needed).

use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::prelude::*;

use voxbridge_config::RunDir;

use crate::metrics::EpochRecord;
use crate::report::RunReport;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Draw markers at the points as well.
    pub markers: bool,
}

/// A plot: title, axis labels, lines, and an optional dashed horizontal reference (chance).
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
    pub reference: Option<(&'a str, f64)>,
    /// Fixed y range; otherwise fitted to the data.
    pub y_range: Option<(f64, f64)>,
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // Registration fails only for an invalid font file; the embedded one is valid.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

impl LinePlot<'_> {
    /// Draws the plot into `path` (PNG, 900×540).
    pub fn draw(&self, path: &Path) -> anyhow::Result<()> {
        register_font();
        self.draw_inner(path).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("drawing {}", path.display()))
    }

    fn draw_inner(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let points =
            || self.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1) =
            points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let (y0, y1) = self.y_range.unwrap_or_else(|| {
            let (mut lo, mut hi) =
                points().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
            if let Some((_, r)) = self.reference {
                lo = lo.min(r);
                hi = hi.max(r);
            }
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            let pad = ((hi - lo) * 0.05).max(1e-6);
            (lo - pad, hi + pad)
        });
        let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().x_desc(self.x_label).y_desc(self.y_label).label_style(("sans-serif", 14)).draw()?;
        for (i, s) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            if s.markers {
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
        }
        if let Some((label, y)) = self.reference {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(DashedLineSeries::new(vec![(x0, y), (x1, y)], 6, 4, grey.stroke_width(1)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// A run's plots: `plots/loss.png` (per-step loss and the epoch means) and, when evaluated
/// during training, `plots/retrieval.png` (top-1 per epoch).
pub fn run_plots(run: &RunDir, report: &RunReport, step_losses: &[(u64, f64)]) -> anyhow::Result<()> {
    let dir = run.plots();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let epoch_end = |e: &EpochRecord| e.steps as f64;
    LinePlot {
        title: &format!("{}: training loss", report.name),
        x_label: "step",
        y_label: "loss",
        series: vec![
            Series {
                label: "per step".into(),
                points: step_losses.iter().map(|&(s, l)| (s as f64, l)).collect(),
                markers: false,
            },
            Series {
                label: "epoch mean".into(),
                points: report.epochs.iter().map(|e| (epoch_end(e), e.mean_loss)).collect(),
                markers: false,
            },
        ],
        reference: None,
        y_range: None,
    }
    .draw(&run.loss_plot())?;
    let evaluated: Vec<_> = report.epochs.iter().filter(|e| e.image_top1.is_some()).collect();
    if !evaluated.is_empty() {
        let chance = report.evaluation.values().next().map_or(0.0, |e| e.retrieval.chance);
        let pick = |f: fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
            evaluated.iter().filter_map(|e| f(e).map(|v| ((e.epoch + 1) as f64, v))).collect()
        };
        LinePlot {
            title: &format!("{}: top-1 retrieval during training", report.name),
            x_label: "epoch",
            y_label: "top-1 accuracy",
            series: vec![
                Series { label: "image (brain → image)".into(), points: pick(|e| e.image_top1), markers: true },
                Series { label: "brain (image → brain)".into(), points: pick(|e| e.brain_top1), markers: true },
            ],
            reference: Some(("chance", chance)),
            y_range: Some((0.0, 1.0)),
        }
        .draw(&run.retrieval_plot())?;
    }
    Ok(())
}
