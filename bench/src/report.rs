//! Reporting shared by every strom-bench mode.
//!
//! Every Strom figure is printed beside the same-run baseline it is judged
//! against (see `bench/README.md`): a [`Figure`] carries its value, its unit and,
//! optionally, the baseline's name and value, and prints the ratio between them.
//! A [`Report`] gathers figures, latency summaries, the run's parameters and a
//! description of the machine, prints them as aligned lines and writes them as
//! JSON for `--json FILE`.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Errors of every strom-bench mode. Each carries the operation that failed
/// and, where there is one, the file or address it failed on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file-system operation (through std or glommio) failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("{op} {addr}: {source}")]
    Net {
        op: &'static str,
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A transfer returned fewer bytes than asked for.
    #[error("{op} {}: short transfer at offset {offset}: {got} of {want} bytes", path.display())]
    Short {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        got: usize,
        want: usize,
    },
    /// The glommio executor could not be built or joined (often RLIMIT_MEMLOCK).
    #[error("glommio executor for {op}: {message}")]
    Executor { op: &'static str, message: String },
    /// A benchmark thread panicked.
    #[error("thread {name} panicked")]
    ThreadPanic { name: &'static str },
    /// Writing the JSON report failed.
    #[error("write JSON report {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The options make no sense (zero sizes, unknown cores, ...).
    #[error("invalid option: {0}")]
    Config(String),
}

impl BenchError {
    /// Wraps an I/O error with the operation and the path it concerned.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: impl Into<io::Error>) -> Self {
        BenchError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source: source.into(),
        }
    }
}

/// One measured figure, optionally judged against a baseline from the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    /// The baseline's name and value, in the same unit as `value`.
    pub baseline: Option<(String, f64)>,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Figure {
            name: name.into(),
            value,
            unit: unit.into(),
            baseline: None,
        }
    }

    /// Sets the baseline this figure is judged against (same unit).
    #[allow(dead_code)] // used by the engine mode
    pub fn with_baseline(mut self, name: impl Into<String>, value: f64) -> Self {
        self.baseline = Some((name.into(), value));
        self
    }

    /// `value / baseline`, when there is a baseline and it is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match &self.baseline {
            Some((_, b)) if *b != 0.0 && b.is_finite() => Some(self.value / b),
            _ => None,
        }
    }
}

/// Formats a value with a precision suited to its size.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A latency distribution, in `unit`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub unit: String,
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a histogram whose recorded values are in `unit`.
    pub fn from_histogram(hist: &Histogram<u64>, unit: &str) -> Self {
        let q = |q: f64| hist.value_at_quantile(q) as f64;
        LatencySummary {
            unit: unit.to_string(),
            count: hist.len(),
            mean: hist.mean(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: hist.max() as f64,
        }
    }

    /// The same summary with every value multiplied by `factor`, in `unit`
    /// (e.g. a histogram recorded in ns: `.scaled(1e-3, "us")`).
    pub fn scaled(&self, factor: f64, unit: &str) -> Self {
        LatencySummary {
            unit: unit.to_string(),
            count: self.count,
            mean: self.mean * factor,
            p50: self.p50 * factor,
            p90: self.p90 * factor,
            p99: self.p99 * factor,
            p99_9: self.p99_9 * factor,
            p99_99: self.p99_99 * factor,
            max: self.max * factor,
        }
    }

    /// One line: `p50 331 p90 402 ... max 2100 us  mean 350  n=2000`.
    pub fn line(&self) -> String {
        let mut s = String::new();
        for (label, v) in [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("p99.99", self.p99_99),
            ("max", self.max),
        ] {
            let _ = write!(s, "{label} {}  ", fmt_value(v));
        }
        let _ = write!(
            s,
            "{}  mean {}  n={}",
            self.unit,
            fmt_value(self.mean),
            self.count
        );
        s
    }
}

/// Facts about the machine the run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
}

impl MachineInfo {
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(uname_release)
            .unwrap_or_else(|| "unknown".to_string());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        MachineInfo {
            cores,
            kernel,
            cpu_model,
        }
    }
}

fn uname_release() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Serialize)]
struct FigureJson<'a> {
    name: &'a str,
    value: f64,
    unit: &'a str,
    baseline: Option<BaselineJson<'a>>,
    ratio: Option<f64>,
}

#[derive(Serialize)]
struct BaselineJson<'a> {
    name: &'a str,
    value: f64,
}

#[derive(Serialize)]
struct LatencyJson<'a> {
    name: &'a str,
    #[serde(flatten)]
    summary: &'a LatencySummary,
}

#[derive(Serialize)]
struct ReportJson<'a> {
    mode: &'a str,
    unix_time: u64,
    parameters: &'a Value,
    machine: &'a MachineInfo,
    figures: Vec<FigureJson<'a>>,
    latencies: Vec<LatencyJson<'a>>,
}

/// Everything one run measured, with its parameters and machine.
#[derive(Clone, Debug)]
pub struct Report {
    pub mode: String,
    /// The run's parameters, a JSON object.
    pub parameters: Value,
    pub machine: MachineInfo,
    pub figures: Vec<Figure>,
    pub latencies: Vec<(String, LatencySummary)>,
}

impl Report {
    pub fn new(mode: impl Into<String>, parameters: Value) -> Self {
        Report {
            mode: mode.into(),
            parameters,
            machine: MachineInfo::detect(),
            figures: Vec::new(),
            latencies: Vec::new(),
        }
    }

    pub fn add_figure(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn add_latency(&mut self, name: impl Into<String>, summary: LatencySummary) {
        self.latencies.push((name.into(), summary));
    }

    /// The header and one aligned line per figure and per latency summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# strom-bench {}: {} cores, kernel {}, {}",
            self.mode, self.machine.cores, self.machine.kernel, self.machine.cpu_model
        );
        let name_w = self
            .figures
            .iter()
            .map(|f| f.name.len())
            .chain(self.latencies.iter().map(|(n, _)| n.len()))
            .max()
            .unwrap_or(0);
        let vals: Vec<String> = self.figures.iter().map(|f| fmt_value(f.value)).collect();
        let val_w = vals.iter().map(String::len).max().unwrap_or(0);
        let unit_w = self
            .figures
            .iter()
            .map(|f| f.unit.chars().count())
            .max()
            .unwrap_or(0);
        for (f, v) in self.figures.iter().zip(&vals) {
            let mut line = format!(
                "{:<name_w$}  {:>val_w$} {:<unit_w$}",
                f.name,
                v,
                f.unit,
                name_w = name_w,
                val_w = val_w,
                unit_w = unit_w
            );
            if let (Some(r), Some((bname, bval))) = (f.ratio(), &f.baseline) {
                let _ = write!(
                    line,
                    "  ratio {r:.2} of {bname} ({} {})",
                    fmt_value(*bval),
                    f.unit
                );
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for (name, l) in &self.latencies {
            let _ = writeln!(out, "{name:<name_w$}  {}", l.line(), name_w = name_w);
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }

    /// The report as a JSON object (`mode`, `unix_time`, `parameters`,
    /// `machine`, `figures`, `latencies`), for modes that add their own keys.
    pub fn to_json(&self) -> Value {
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let doc = ReportJson {
            mode: &self.mode,
            unix_time,
            parameters: &self.parameters,
            machine: &self.machine,
            figures: self
                .figures
                .iter()
                .map(|f| FigureJson {
                    name: &f.name,
                    value: f.value,
                    unit: &f.unit,
                    baseline: f
                        .baseline
                        .as_ref()
                        .map(|(n, v)| BaselineJson { name: n, value: *v }),
                    ratio: f.ratio(),
                })
                .collect(),
            latencies: self
                .latencies
                .iter()
                .map(|(name, summary)| LatencyJson { name, summary })
                .collect(),
        };
        serde_json::to_value(&doc).unwrap_or(Value::Null)
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        write_json_value(path, &self.to_json())
    }
}

/// Writes `doc` as pretty JSON to `path`.
pub fn write_json_value(path: &Path, doc: &Value) -> Result<(), BenchError> {
    let file = std::fs::File::create(path).map_err(|e| BenchError::io("create", path, e))?;
    let mut w = io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, doc).map_err(|source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    io::Write::write_all(&mut w, b"\n").map_err(|e| BenchError::io("write", path, e))?;
    io::Write::flush(&mut w).map_err(|e| BenchError::io("flush", path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_render() {
        let mut r = Report::new("test", serde_json::json!({"bytes": 1}));
        r.add_figure(Figure::new("raw_odirect_write", 3.12, "GB/s"));
        r.add_figure(
            Figure::new("append_throughput", 2.91, "GB/s").with_baseline("raw_odirect_write", 3.12),
        );
        let text = r.render();
        assert!(text.contains("ratio 0.93 of raw_odirect_write (3.12 GB/s)"));
        assert_eq!(
            Figure::new("x", 1.0, "u").with_baseline("b", 0.0).ratio(),
            None
        );
    }

    #[test]
    fn latency_summary() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let s = LatencySummary::from_histogram(&h, "ns").scaled(1e-3, "us");
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{}", s.p50);
        assert!((s.max - 1000.0).abs() < 1.0, "{}", s.max);
        assert_eq!(s.unit, "us");
    }
}
