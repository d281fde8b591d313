//! What the SVG charts of `simulate --plot` and `demo --plot` share.

use plotters::prelude::*;

/// A plotters error as an `anyhow` one.
pub fn err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// A legend swatch for a line of `color`.
pub fn swatch(color: RGBAColor, width: u32) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(width))
}

/// The legend box, the same on every chart.
pub fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(position)
        .draw()
        .map_err(err)
}
