//! `eddy eval --plot out.svg`: the rolling figure along the stream as an
//! SVG line chart (plotters), because people would rather look than read;
//! with `--monitor`, rollbacks and refused candidates are red verticals.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::Evaluation;
use crate::serving::events::EventKind;

pub fn rolling(path: &Path, e: &Evaluation, every: u64, prequential: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        !e.rolling.is_empty(),
        "no rolling figures to plot: fewer than --every {every} rows"
    );
    let last_row = e.rolling.last().map_or(1, |p| p.row).max(1);
    let (lo, hi) = e
        .rolling
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.value), hi.max(p.value))
        });
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(draw)?;
    let title = format!(
        "{} over the last {every} rows ({})",
        e.rolling_metric,
        if prequential {
            "prequential"
        } else {
            "fixed model"
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..last_row, (lo - pad)..(hi + pad))
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("rows")
        .y_desc(e.rolling_metric)
        .draw()
        .map_err(draw)?;
    chart
        .draw_series(LineSeries::new(
            e.rolling.iter().map(|p| (p.row, p.value)),
            &BLUE,
        ))
        .map_err(draw)?;
    // Rollbacks and refused candidates, as red verticals.
    for m in e
        .markers
        .iter()
        .filter(|m| matches!(m.kind, EventKind::Rollback | EventKind::GateRefused))
    {
        chart
            .draw_series(LineSeries::new(
                [(m.row, lo - pad), (m.row, hi + pad)],
                &RED,
            ))
            .map_err(draw)?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
