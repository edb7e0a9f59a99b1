//! `--plot FILE.svg`: the latency percentile curves (HdrHistogram style: the
//! x axis is 1/(1-percentile) on a log scale, so p99, p99.9 and p99.99 get
//! equal room) above the throughput per second over the run. Drawn with
//! plotters' SVG backend.

use std::path::Path;

use plotters::prelude::*;

use crate::load::{percentile_curve, Outcome};
use crate::report::BenchError;

fn plot_err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::io("draw plot", path, std::io::Error::other(e.to_string()))
}

/// A named, coloured line of points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

pub fn draw(path: &Path, title: &str, o: &Outcome) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (1100, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| plot_err(path, e))?;
    let (top, bottom) = root.split_vertically(480);

    // Latency percentile curves: x = log10(1 / (1 - q)).
    let curves: Vec<Line> = [
        ("produce ack", BLUE, percentile_curve(&o.ack)),
        ("end-to-end", RED, percentile_curve(&o.e2e)),
    ]
    .into_iter()
    .filter(|c| !c.2.is_empty())
    .map(|(n, c, pts)| {
        let pts = pts
            .into_iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|(q, v)| ((1.0 / (1.0 - q)).log10(), v.max(1.0)))
            .collect();
        (n, c, pts)
    })
    .collect();
    let x_max = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    let y_max = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.1))
        .fold(10.0f64, f64::max)
        * 1.5;
    let y_min = curves
        .iter()
        .flat_map(|c| c.2.iter().map(|p| p.1))
        .fold(f64::INFINITY, f64::min)
        .clamp(1.0, y_max / 10.0)
        * 0.7;
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by percentile (us)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            let q = 1.0 - 10f64.powf(-*x);
            let p = 100.0 * q;
            if *x < 0.5 {
                "0%".to_string()
            } else {
                let digits = (x.round() as usize).saturating_sub(2);
                format!("{p:.digits$}%")
            }
        })
        .x_desc("percentile")
        .y_desc("us")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    for (name, color, pts) in &curves {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }

    // Throughput per second.
    let t_max = o.series.iter().map(|p| p.t).fold(1.0f64, f64::max);
    let mb_max = o
        .series
        .iter()
        .map(|p| p.produced_mb_per_sec.max(p.consumed_mb_per_sec))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "throughput per second (MB/s of record values)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..mb_max)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds (warm-up included)")
        .y_desc("MB/s")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let lines: [Line; 2] = [
        (
            "produce",
            BLUE,
            o.series
                .iter()
                .map(|p| (p.t, p.produced_mb_per_sec))
                .collect(),
        ),
        (
            "consume",
            RED,
            o.series
                .iter()
                .map(|p| (p.t, p.consumed_mb_per_sec))
                .collect(),
        ),
    ];
    for (name, color, pts) in lines {
        if pts.iter().all(|p| p.1 == 0.0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// One second of an open-loop run, for [`draw_seconds`].
pub struct SecondSample {
    /// Start of the second (s from the start of the measured window).
    pub t: f64,
    pub records_per_sec: f64,
    /// p99 of the answers in that second (ms), if any came.
    pub p99_ms: Option<f64>,
}

/// Open-loop `requests`: records completed per second, with the target
/// rate and 0.9 of it, above the ack p99 per second (log y).
pub fn draw_seconds(
    path: &Path,
    title: &str,
    points: &[SecondSample],
    target: f64,
) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| plot_err(path, e))?;
    let (top, bottom) = root.split_vertically(400);
    let t_max = points.iter().map(|p| p.t + 1.0).fold(1.0f64, f64::max);

    let y_max = points
        .iter()
        .map(|p| p.records_per_sec)
        .fold(target * 1.15, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("records completed per second", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds of the measured window")
        .y_desc("records/s")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let lines: [Line; 3] = [
        (
            "completed",
            BLUE,
            points.iter().map(|p| (p.t, p.records_per_sec)).collect(),
        ),
        ("target", BLACK, vec![(0.0, target), (t_max, target)]),
        (
            "0.9 x target",
            RED,
            vec![(0.0, 0.9 * target), (t_max, 0.9 * target)],
        ),
    ];
    for (name, color, pts) in lines {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;

    let p99: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.p99_ms.map(|v| (p.t, v.max(1e-3))))
        .collect();
    let hi = p99.iter().map(|p| p.1).fold(1.0f64, f64::max) * 2.0;
    let lo = p99.iter().map(|p| p.1).fold(hi, f64::min).min(hi / 10.0) * 0.5;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("ack p99 per second (ms, log scale)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..t_max, (lo..hi).log_scale())
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("seconds of the measured window")
        .y_desc("ms")
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(LineSeries::new(p99, BLUE.stroke_width(2)))
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
