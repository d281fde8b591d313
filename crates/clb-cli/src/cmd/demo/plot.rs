//! `clb demo --plot FILE.svg`: per-node counts over time, with the restarts
//! and the rebalancing marked.

use std::path::Path;

use anyhow::Context;
use clb::core::Strategy;
use plotters::prelude::*;

use crate::cmd::chart;

use super::monitor::Sample;

pub fn write(
    path: &Path,
    ids: &[String],
    history: &[Sample],
    marks: &[(f64, String)],
    strategy: Strategy,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(chart::err)?;
    let t_max = history.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = history
        .iter()
        .flat_map(|s| s.nodes.iter().filter_map(|n| n.count))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "clb demo: {} nodes, strategy {strategy}: connections per node",
                ids.len()
            ),
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(chart::err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the clients started")
        .y_desc("connections")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(chart::err)?;
    for (t, label) in marks {
        let color = if label.starts_with("restart ") && label != "restart done" {
            BLACK.mix(0.25)
        } else {
            BLUE.mix(0.5)
        };
        chart
            .draw_series(LineSeries::new(
                [(*t, 0.0), (*t, y_max)],
                color.stroke_width(1),
            ))
            .map_err(chart::err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (*t, y_max * 0.72),
                ("sans-serif", 12)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )))
            .map_err(chart::err)?;
    }
    for (i, id) in ids.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // A gap where the node was down: split the line at missing samples.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for s in history {
            match s.nodes.get(i).and_then(|n| n.count) {
                Some(c) => runs
                    .last_mut()
                    .into_iter()
                    .for_each(|r| r.push((s.t, c as f64))),
                None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for (k, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
            let series = chart
                .draw_series(LineSeries::new(run, color.stroke_width(2)))
                .map_err(chart::err)?;
            if k == 0 {
                series.label(id.clone()).legend(chart::swatch(color, 2));
            }
        }
    }
    chart::legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()
        .map_err(chart::err)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
