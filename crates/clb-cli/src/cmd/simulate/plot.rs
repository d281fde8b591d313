//! `--plot FILE.svg`: per-node counts per round, one panel per run.

use std::path::Path;

use anyhow::Context;
use clb_sim::SimReport;
use plotters::prelude::*;

use crate::cmd::chart;

/// Above this many nodes, draw the spread (min, mean, max) instead of a line
/// per node.
const MAX_LINES: usize = 12;

/// Draws each `(report, title)` side by side. Warm-up rounds (the rolling
/// deploy) are numbered up to 0, balancing rounds from 1.
pub fn write(path: &Path, panels: &[(&SimReport, &str)]) -> anyhow::Result<()> {
    let width = 640 * panels.len() as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(chart::err)?;
    let areas = root.split_evenly((1, panels.len()));
    let y_max = panels
        .iter()
        .flat_map(|(r, _)| {
            r.warmup
                .iter()
                .chain(&r.rounds)
                .flat_map(|rec| rec.counts.iter())
        })
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.05;
    for ((report, title), area) in panels.iter().zip(&areas) {
        draw(area, report, title, y_max)?;
    }
    root.present()
        .map_err(chart::err)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn draw(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    r: &SimReport,
    title: &str,
    y_max: f64,
) -> anyhow::Result<()> {
    let warm = i64::from(r.warmup_rounds);
    // Where things happen, for the eye: show the warm-up and the rounds up to
    // a little after the last change of any count.
    let last_change = r
        .rounds
        .windows(2)
        .rposition(|w| w[0].counts != w[1].counts)
        .map_or(r.rounds.len(), |i| i + 2);
    let shown = (last_change + last_change / 4 + 3)
        .min(r.rounds.len())
        .max(1);
    let x_range = (1 - warm)..(shown as i64 + 1);
    let points: Vec<(i64, &Vec<u64>)> = r
        .warmup
        .iter()
        .map(|rec| (i64::from(rec.round) - warm, &rec.counts))
        .chain(
            r.rounds
                .iter()
                .take(shown)
                .map(|rec| (i64::from(rec.round), &rec.counts)),
        )
        .chain(std::iter::once((shown as i64 + 1, &r.final_counts)))
        .collect();

    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{title}: {} {}×{} (seed {})",
                r.scenario, r.nodes, r.clients, r.seed
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range.start..x_range.end, 0f64..y_max)
        .map_err(chart::err)?;
    chart
        .configure_mesh()
        .x_desc(if warm > 0 {
            "round (≤ 0: rolling deploy)"
        } else {
            "round"
        })
        .y_desc("resources per node")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(chart::err)?;

    let mean = r.clients as f64 / r.nodes as f64;
    for (band, shade, name) in [(0.05, 0.45, "target ±5%"), (0.10, 0.2, "target ±10%")] {
        let color = BLACK.mix(shade);
        let line = |y| {
            LineSeries::new(
                [(x_range.start, y), (x_range.end, y)],
                color.stroke_width(1),
            )
        };
        chart
            .draw_series(line(mean * (1.0 - band)))
            .map_err(chart::err)?;
        chart
            .draw_series(line(mean * (1.0 + band)))
            .map_err(chart::err)?
            .label(name)
            .legend(chart::swatch(color, 1));
    }
    if warm > 0 {
        let color = BLUE.mix(0.35);
        chart
            .draw_series(LineSeries::new(
                [(1, 0.0), (1, y_max)],
                color.stroke_width(3),
            ))
            .map_err(chart::err)?
            .label("round 1: last node back")
            .legend(chart::swatch(color, 3));
    }

    if r.nodes <= MAX_LINES {
        for node in 0..r.nodes {
            let color = Palette99::pick(node).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, c)| (*x, c[node] as f64)),
                    color.stroke_width(2),
                ))
                .map_err(chart::err)?
                .label(format!("node {node}"))
                .legend(chart::swatch(color.to_rgba(), 2));
        }
    } else {
        type Line = (&'static str, fn(&[u64]) -> f64, RGBColor);
        let spread: [Line; 2] = [
            ("max", |c| c.iter().copied().max().unwrap_or(0) as f64, RED),
            ("min", |c| c.iter().copied().min().unwrap_or(0) as f64, BLUE),
        ];
        for (name, f, color) in spread {
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|(x, c)| (*x, f(c))),
                    color.stroke_width(2),
                ))
                .map_err(chart::err)?
                .label(format!("{name} of {} nodes", r.nodes))
                .legend(chart::swatch(color.to_rgba(), 2));
        }
    }
    chart::legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}
