//! Charts as RGB pixels, for PNG files: the loss curves of training runs, the grouped bar
//! chart of `ldm bench` and `ldm compare`, and the system font their text is drawn in.

use std::sync::OnceLock;

use plotters::prelude::*;

/// Fonts tried for plot text, in order (Debian's fonts-dejavu-core, then Liberation).
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the first font found as plotters' "sans-serif"; plots go without text when
/// there is none (no font ships with the project).
pub fn font_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                // plotters keeps registered fonts for the whole process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// A grouped bar chart on a logarithmic axis as an RGB image: one group per entry of
/// `groups`, one bar per series (NaN: no bar). Returns (width, height, pixels).
pub fn grouped_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> Result<(u32, u32, Vec<u8>), String> {
    let (width, height) = (220 * groups.len().max(1) as u32 + 120, 420u32);
    let mut buffer = vec![255u8; (width * height * 3) as usize];
    let values = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (low, high) = values.fold((f64::INFINITY, 0f64), |(l, h), v| (l.min(v), h.max(v)));
    let (low, high) = if high > 0.0 {
        (low / 2.0, high * 2.0)
    } else {
        (0.1, 10.0)
    };
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        let text = font_available();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(title, ("sans-serif", 18))
                .x_label_area_size(40)
                .y_label_area_size(70);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..groups.len() as f64, (low..high).log_scale())
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(groups.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.floor() as usize;
                    let centred = (x - x.floor() - 0.5).abs() < 1e-6;
                    if centred && i < groups.len() {
                        groups[i].clone()
                    } else {
                        String::new()
                    }
                })
                .y_desc(y_label)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        let bar = 0.8 / series.len().max(1) as f64;
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = palette[s % palette.len()];
            let bars = values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && **v > 0.0)
                .map(|(g, &v)| {
                    let x0 = g as f64 + 0.1 + s as f64 * bar;
                    Rectangle::new([(x0, low), (x0 + bar * 0.9, v)], colour.filled())
                });
            let drawn = chart.draw_series(bars).map_err(|e| e.to_string())?;
            if text {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok((width, height, buffer))
}

/// One panel per column of `rows` (value against step), side by side, as an RGB image:
/// the loss curves of a run's log. Titles and axis labels are drawn when a system font is
/// found (see [`font_available`]). Returns (width, height, pixels).
pub fn line_panels(
    columns: &[&str],
    rows: &[(u64, Vec<f64>)],
) -> Result<(u32, u32, Vec<u8>), String> {
    let text = font_available();
    let (panel_w, panel_h) = (400u32, 260u32);
    let width = panel_w * columns.len() as u32;
    let mut buffer = vec![255u8; (width * panel_h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, panel_h)).into_drawing_area();
        let panels = root.split_evenly((1, columns.len()));
        let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, panel) in panels.iter().enumerate() {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|(s, v)| (*s as f64, v[i]))
                .filter(|(_, v)| v.is_finite())
                .collect();
            if points.len() < 2 {
                continue;
            }
            let (x0, x1) = (
                points[0].0,
                points[points.len() - 1].0.max(points[0].0 + 1.0),
            );
            let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
                (lo.min(p.1), hi.max(p.1))
            });
            let pad = ((hi - lo) * 0.05).max(1e-6);
            let mut builder = ChartBuilder::on(panel);
            builder.margin(10);
            if text {
                builder
                    .caption(columns[i], ("sans-serif", 18))
                    .x_label_area_size(28)
                    .y_label_area_size(64);
            }
            let mut chart = builder
                .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))
                .map_err(|e| e.to_string())?;
            if text {
                chart
                    .configure_mesh()
                    .x_labels(4)
                    .y_labels(5)
                    .y_label_formatter(&|v| axis_label(*v))
                    .draw()
                    .map_err(|e| e.to_string())?;
            }
            chart
                .draw_series(LineSeries::new(points, &colours[i % colours.len()]))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok((width, panel_h, buffer))
}

/// Four significant digits, in scientific notation for small or large magnitudes.
fn axis_label(v: f64) -> String {
    if v != 0.0 && !(1e-2..1e4).contains(&v.abs()) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}
