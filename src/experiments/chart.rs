//! Line charts as PNG files, drawn with plotters' bitmap backend.
//!
//! Text is rendered with ab_glyph from DejaVu Sans, bundled in the binary
//! (`assets/fonts/DejaVuSans.ttf`, its licence beside it), so charts need no system fonts, no
//! fontconfig and no freetype: they draw the same on a bare Debian machine or in a container.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::ExperimentError;

/// Every chart's width in pixels.
pub const WIDTH: u32 = 1200;
/// Every chart's height in pixels.
pub const HEIGHT: u32 = 800;

/// The font family name charts use; registered with plotters on first use.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Colours for the series of a panel, in order.
pub const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// One line of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's text.
    pub label: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Whether every point is marked too (for sweeps with few points).
    pub markers: bool,
}

impl Series {
    /// A plain line.
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            markers: false,
        }
    }

    /// A line with every point marked.
    pub fn marked(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            markers: true,
            ..Series::line(label, points)
        }
    }
}

/// One plot of a chart.
#[derive(Clone, Debug)]
pub struct Panel {
    /// The panel's caption.
    pub title: String,
    /// The x axis' description.
    pub x_label: String,
    /// The y axis' description.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the bundled font does not parse".to_owned())
        })
        .clone()
}

/// Draws `panels` in a grid of `rows` × `columns` under `title` into the PNG file `path`.
pub fn draw(
    path: &Path,
    title: &str,
    (rows, columns): (usize, usize),
    panels: &[Panel],
) -> Result<(), ExperimentError> {
    let fail = |message: String| ExperimentError::Write {
        path: path.to_path_buf(),
        message,
    };
    register_font().map_err(fail)?;
    draw_panels(path, title, (rows, columns), panels).map_err(fail)
}

fn draw_panels(
    path: &Path,
    title: &str,
    grid: (usize, usize),
    panels: &[Panel],
) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let body = root
        .titled(title, (FAMILY, 21).into_font())
        .map_err(|e| text(&e))?;
    for (area, panel) in body.split_evenly(grid).iter().zip(panels) {
        let (x_range, y_range) = ranges(panel);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FAMILY, 17).into_font())
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(|e| text(&e))?;
        chart
            .configure_mesh()
            .x_desc(panel.x_label.as_str())
            .y_desc(panel.y_label.as_str())
            .label_style((FAMILY, 13).into_font())
            .x_label_formatter(&number)
            .y_label_formatter(&number)
            .axis_desc_style((FAMILY, 14).into_font())
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| text(&e))?;
        for (series, colour) in panel.series.iter().zip(COLOURS.iter().cycle()) {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| text(&e))?
                .label(series.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            if series.markers {
                chart
                    .draw_series(
                        series
                            .points
                            .iter()
                            .map(|&point| Circle::new(point, 4, colour.filled())),
                    )
                    .map_err(|e| text(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FAMILY, 13).into_font())
            .draw()
            .map_err(|e| text(&e))?;
    }
    root.present().map_err(|e| text(&e))?;
    Ok(())
}

/// An axis label: whole numbers without decimals, others with up to two.
fn number(value: &f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The axes' ranges: every point visible, y from 0 (or below, for negative values) with headroom
/// for the legend.
fn ranges(panel: &Panel) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let points = || panel.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let (mut y0, mut y1) =
        points().fold((0.0f64, 0.0f64), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if !x0.is_finite() || !x1.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    y1 += (y1 - y0) * 0.35;
    if y0 < 0.0 {
        y0 -= (y1 - y0) * 0.05;
    }
    (x0..x1, y0..y1)
}
