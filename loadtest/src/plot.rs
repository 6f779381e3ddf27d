//! PNG plot of one or more runs: latency by percentile (left; x in "nines": 90%, 99%,
//! 99.9%, ...; y logarithmic) and the server's CPU over time (right). Text is drawn with
//! the DejaVu Sans font embedded in the binary, so no system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::RunResult;

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28), // red: the first run (Herald in bench-peers.sh)
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// x position of percentile `p` (0..100): -log10(1 - p/100), so 90% is 1, 99% is 2.
pub fn nines(p: f64) -> f64 {
    let rest = (1.0 - p / 100.0).max(1e-7);
    -rest.log10()
}

/// Label of x position `x` in nines: 0 -> "0%", 1 -> "90%", 2 -> "99%", 3 -> "99.9%".
pub fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if x < 0.5 {
        "0%".into()
    } else if x <= 2.0 + 1e-9 {
        format!("{p:.0}%")
    } else {
        let decimals = (x.round() as usize).saturating_sub(2);
        format!("{p:.decimals$}%")
    }
}

/// The latency curve of one run: its spectrum without the 100% point (shown as max
/// at the right edge, one step past the last percentile).
fn curve(r: &RunResult) -> Vec<(f64, f64)> {
    let Some(s) = r.latency.as_ref().or(r.connect_latency.as_ref()) else {
        return Vec::new();
    };
    let mut pts: Vec<(f64, f64)> = s
        .spectrum
        .iter()
        .filter(|(p, _)| *p < 100.0)
        .map(|(p, v)| (nines(*p), v.max(0.001)))
        .collect();
    if let Some(&(x, _)) = pts.last() {
        pts.push((x + 0.3, s.max_ms.max(0.001)));
    }
    pts
}

/// The server's name, with the share delivered when it is short of everything.
fn legend(r: &RunResult) -> String {
    match r.delivered_pct {
        Some(p) if p < 99.95 => format!("{} ({p:.1}% delivered)", r.server),
        _ => r.server.clone(),
    }
}

pub fn draw(path: &Path, title: &str, results: &[RunResult]) -> anyhow::Result<()> {
    register_fonts();
    let root = BitMapBackend::new(path, (1280, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let root = root
        .titled(title, ("sans-serif", 24).into_font().style(FontStyle::Bold))
        .map_err(|e| anyhow!("{e:?}"))?;
    let (left, right) = root.split_horizontally(760);

    let curves: Vec<Vec<(f64, f64)>> = results.iter().map(curve).collect();
    let x_max = curves
        .iter()
        .flatten()
        .map(|p| p.0)
        .fold(3.0_f64, f64::max)
        .ceil();
    let (y_min, y_max) = curves
        .iter()
        .flatten()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let (y_min, y_max) = if y_max <= 0.0 {
        (0.01, 1.0)
    } else {
        (
            10f64.powf(y_min.log10().floor()).max(0.001),
            10f64.powf(y_max.log10().ceil()),
        )
    };
    let latency_label = match results.first().map(|r| r.scenario.as_str()) {
        Some("connect") => "connect latency (ms)",
        Some("history") => "request latency (ms)",
        _ => "publish-to-deliver latency (ms)",
    };
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc(latency_label)
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (i, (r, pts)) in results.iter().zip(&curves).enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e:?}"))?
            .label(legend(r))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;

    // Server CPU over time.
    let samples: Vec<&[(f64, u64, f64)]> = results
        .iter()
        .map(|r| r.server_stats.as_ref().map_or(&[][..], |s| &s.samples[..]))
        .collect();
    let t_max = samples
        .iter()
        .flat_map(|s| s.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let cpu_max = samples
        .iter()
        .flat_map(|s| s.iter().map(|p| p.2))
        .fold(100.0_f64, f64::max);
    let mut cpu = ChartBuilder::on(&right)
        .caption("server CPU (100% = one core)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..(cpu_max * 1.1))
        .map_err(|e| anyhow!("{e:?}"))?;
    cpu.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("CPU %")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (i, s) in samples.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        cpu.draw_series(LineSeries::new(
            s.iter().map(|p| (p.0, p.2)),
            color.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist;
    use crate::report::ServerStats;

    #[test]
    fn nines_scale() {
        assert!(nines(0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(4.0), "99.99%");
    }

    #[test]
    fn legend_flags_short_deliveries() {
        let mut r = RunResult {
            server: "x".into(),
            ..RunResult::default()
        };
        assert_eq!(legend(&r), "x");
        r.delivered_pct = Some(100.0);
        assert_eq!(legend(&r), "x");
        r.delivered_pct = Some(0.29);
        assert_eq!(legend(&r), "x (0.3% delivered)");
    }

    #[test]
    fn renders_a_png() {
        let mut h = hist::new();
        for v in 1..=5000 {
            hist::record(&mut h, v * 7);
        }
        let r = RunResult {
            scenario: "broadcast".into(),
            server: "herald".into(),
            latency: hist::summary(&h),
            server_stats: Some(ServerStats {
                samples: vec![(0.0, 1, 10.0), (1.0, 1, 150.0), (2.0, 1, 120.0)],
                ..ServerStats::default()
            }),
            ..RunResult::default()
        };
        let mut other = r.clone();
        other.server = "nchan".into();
        let path = std::env::temp_dir().join(format!("hl-plot-{}.png", std::process::id()));
        draw(&path, "test plot", &[r, other, RunResult::default()]).expect("draw");
        let bytes = std::fs::read(&path).expect("png written");
        assert!(bytes.starts_with(b"\x89PNG"));
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
        let _ = std::fs::remove_file(&path);
    }
}
