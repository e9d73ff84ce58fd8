//! The PNG chart of a load run: four panels over time (writes/s, p99 write
//! latency, wire messages/s, awake and hibernated regions), with the phase
//! starts marked.
//!
//! Text needs a font: plotters draws it with `ab_glyph` from a TrueType
//! file read at run time ([`FONT_CANDIDATES`], or `$FLOTILLA_FONT`). With
//! none found the chart is drawn without text; the panel order is then
//! [`PANEL_LEGEND`], which the caller prints.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::LoadError;
use super::series::SeriesRow;

/// Pixels of the whole chart.
pub const CHART_SIZE: (u32, u32) = (1400, 900);
/// What the panels show, left to right, top to bottom (for a chart drawn
/// without text).
pub const PANEL_LEGEND: &str = "top left: writes/s (blue); top right: p99 write latency, ms \
    (red); bottom left: wire messages/s over all stores (green); bottom right: awake regions \
    (blue) and hibernated regions (grey); x: seconds since the cluster started; orange \
    verticals: phase starts";
/// Environment variable naming a TrueType font to draw text with.
pub const FONT_ENV: &str = "FLOTILLA_FONT";
/// Fonts tried, in order, when [`FONT_ENV`] is unset.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];
/// The family name text is drawn with (and the font registered as).
const FONT: &str = "sans-serif";
const CAPTION_PX: u32 = 20;
const LABEL_PX: u32 = 13;
const MARGIN_PX: u32 = 12;
const X_LABEL_AREA_PX: u32 = 36;
const Y_LABEL_AREA_PX: u32 = 70;
const LINE_PX: u32 = 2;
/// Axes whose top is below this get labels with one decimal.
const DECIMALS_BELOW: f64 = 20.0;
/// Head room above the highest value of a panel.
const Y_HEADROOM: f64 = 1.1;
/// Phase starts are orange, apart from the grey mesh.
const PHASE_LINE: RGBColor = RGBColor(230, 120, 0);
const PHASE_LINE_ALPHA: f64 = 0.7;
const GREY: RGBColor = RGBColor(140, 140, 140);
const DARK_GREEN: RGBColor = RGBColor(0, 140, 60);

/// Registers the first font found (once per process); whether one was.
pub fn font_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let from_env = std::env::var_os(FONT_ENV).map(std::path::PathBuf::from);
        let candidates = from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(std::path::PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

/// One line of a panel: its colour and its points, split where values are
/// missing.
struct Line {
    color: RGBColor,
    segments: Vec<Vec<(f64, f64)>>,
}

impl Line {
    fn from_rows(
        rows: &[SeriesRow],
        color: RGBColor,
        y: impl Fn(&SeriesRow) -> Option<f64>,
    ) -> Line {
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for row in rows {
            match y(row) {
                Some(v) if v.is_finite() => {
                    if let Some(seg) = segments.last_mut() {
                        seg.push((row.time_s, v));
                    }
                }
                _ => {
                    if segments.last().is_some_and(|s| !s.is_empty()) {
                        segments.push(Vec::new());
                    }
                }
            }
        }
        segments.retain(|s| !s.is_empty());
        Line { color, segments }
    }

    fn max(&self) -> f64 {
        self.segments
            .iter()
            .flatten()
            .map(|&(_, y)| y)
            .fold(0.0, f64::max)
    }
}

struct Panel {
    title: &'static str,
    lines: Vec<Line>,
}

fn panels(rows: &[SeriesRow]) -> [Panel; 4] {
    let as_f64 = |v: u64| Some(v as f64);
    [
        Panel {
            title: "writes/s",
            lines: vec![Line::from_rows(rows, BLUE, |r| Some(r.writes_per_s))],
        },
        Panel {
            title: "p99 write latency (ms)",
            lines: vec![Line::from_rows(rows, RED, |r| r.write_p99_ms)],
        },
        Panel {
            title: "wire messages/s (all stores)",
            lines: vec![Line::from_rows(rows, DARK_GREEN, |r| {
                Some(r.wire_msgs_per_s)
            })],
        },
        Panel {
            title: "regions: awake (blue), hibernated (grey)",
            lines: vec![
                Line::from_rows(rows, BLUE, |r| as_f64(r.awake_regions)),
                Line::from_rows(rows, GREY, |r| as_f64(r.hibernated_regions)),
            ],
        },
    ]
}

fn chart_err(e: impl std::fmt::Display) -> LoadError {
    LoadError::Chart(e.to_string())
}

/// Draws the chart of `rows` into a PNG at `path`, marking `phases`
/// (start second, name). Returns whether it has text (a font was found).
///
/// # Errors
/// [`LoadError::Chart`] if drawing or writing the file fails.
pub fn draw_chart(
    rows: &[SeriesRow],
    phases: &[(f64, &str)],
    path: &Path,
) -> Result<bool, LoadError> {
    draw_chart_with(rows, phases, path, font_available())
}

fn draw_chart_with(
    rows: &[SeriesRow],
    phases: &[(f64, &str)],
    path: &Path,
    text: bool,
) -> Result<bool, LoadError> {
    let root = BitMapBackend::new(path, CHART_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let x_max = rows.iter().map(|r| r.time_s).fold(1.0, f64::max);
    let areas = root.split_evenly((2, 2));
    for (area, panel) in areas.iter().zip(panels(rows)) {
        draw_panel(area, &panel, x_max, phases, text)?;
    }
    root.present().map_err(chart_err)?;
    Ok(text)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &Panel,
    x_max: f64,
    phases: &[(f64, &str)],
    text: bool,
) -> Result<(), LoadError> {
    let y_max = (panel.lines.iter().map(Line::max).fold(0.0, f64::max) * Y_HEADROOM).max(1.0);
    let mut builder = ChartBuilder::on(area);
    builder.margin(MARGIN_PX);
    if text {
        builder
            .caption(panel.title, (FONT, CAPTION_PX))
            .x_label_area_size(X_LABEL_AREA_PX)
            .y_label_area_size(Y_LABEL_AREA_PX);
    }
    let mut chart = builder
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(chart_err)?;
    if text {
        let y_decimals = usize::from(y_max < DECIMALS_BELOW);
        chart
            .configure_mesh()
            .x_desc("seconds")
            .label_style((FONT, LABEL_PX))
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
            .draw()
            .map_err(chart_err)?;
    } else {
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(0.0, 0.0), (x_max, y_max)],
                BLACK.stroke_width(1),
            ))
            .map_err(chart_err)?;
    }
    for &(t, name) in phases {
        let style = PHASE_LINE.mix(PHASE_LINE_ALPHA);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(t, 0.0), (t, y_max)],
                style,
            )))
            .map_err(chart_err)?;
        if text {
            chart
                .draw_series(std::iter::once(Text::new(
                    name.to_string(),
                    (t, y_max),
                    (FONT, LABEL_PX),
                )))
                .map_err(chart_err)?;
        }
    }
    for line in &panel.lines {
        for seg in &line.segments {
            chart
                .draw_series(LineSeries::new(
                    seg.iter().copied(),
                    line.color.stroke_width(LINE_PX),
                ))
                .map_err(chart_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<SeriesRow> {
        (0..20)
            .map(|i| SeriesRow {
                time_s: f64::from(i),
                phase: if i < 10 { "idle" } else { "uniform" },
                writes_per_s: if i < 10 { 0.0 } else { 1000.0 + f64::from(i) },
                write_p99_ms: (i >= 10).then(|| f64::from(i) / 2.0),
                wire_msgs_per_s: 50.0,
                awake_regions: 100,
                hibernated_regions: 900,
                rss_bytes: 1 << 20,
            })
            .collect()
    }

    #[test]
    fn missing_values_split_a_line() {
        let line = Line::from_rows(&rows(), RED, |r| r.write_p99_ms);
        assert_eq!(line.segments.len(), 1);
        assert_eq!(line.segments[0].len(), 10);
        assert!((line.max() - 9.5).abs() < 1e-9);
    }

    /// Both ways of drawing (with and without text) write a PNG and never
    /// panic (plotters panics when asked to draw text with no font).
    #[test]
    fn draws_a_png_with_and_without_text() {
        let dir = tempfile::tempdir().expect("temp dir");
        let phases = [(0.0, "idle"), (10.0, "uniform")];
        let plain = dir.path().join("plain.png");
        assert!(!draw_chart_with(&rows(), &phases, &plain, false).expect("plain"));
        assert!(std::fs::metadata(&plain).expect("written").len() > 0);
        let with_text = dir.path().join("text.png");
        let text = draw_chart(&rows(), &phases, &with_text).expect("chart");
        assert_eq!(text, font_available());
        assert!(std::fs::metadata(&with_text).expect("written").len() > 0);
        // No rows at all still draws.
        draw_chart_with(&[], &[], &dir.path().join("empty.png"), false).expect("empty");
    }
}
