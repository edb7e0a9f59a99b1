//! `strom-bench compare A.json B.json`: the ratio B/A of every figure and
//! latency percentile the two reports share (matched by name), and of each
//! figure's ratio to its same-run baseline (the number that survives a
//! noisy machine).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::report::{fmt_value, BenchError};

#[derive(clap::Args, Clone, Debug)]
pub struct CompareArgs {
    /// The reference report (`--json` of any mode).
    pub a: PathBuf,
    /// The report compared with it.
    pub b: PathBuf,
}

fn load(path: &Path) -> Result<Value, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io("read", path, e))?;
    serde_json::from_str(&text).map_err(|source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn named<'a>(doc: &'a Value, key: &str) -> Vec<(&'a str, &'a Value)> {
    doc.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| Some((v.get("name")?.as_str()?, v)))
                .collect()
        })
        .unwrap_or_default()
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Lines of the comparison (also used by the tests).
pub fn compare(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let fb = named(b, "figures");
    let rows: Vec<(String, String, String, String, String)> = named(a, "figures")
        .into_iter()
        .filter_map(|(name, fa)| {
            let (_, fbv) = fb.iter().find(|(n, _)| *n == name)?;
            let (va, vb) = (num(fa, "value")?, num(fbv, "value")?);
            let unit = fa.get("unit").and_then(Value::as_str).unwrap_or("");
            let ratio = if va != 0.0 {
                format!("{:.3}", vb / va)
            } else {
                "-".into()
            };
            let of_base = match (num(fa, "ratio"), num(fbv, "ratio")) {
                (Some(x), Some(y)) => format!("baseline ratio {x:.3} -> {y:.3}"),
                _ => String::new(),
            };
            Some((
                name.to_string(),
                format!("{} {unit}", fmt_value(va)),
                format!("{} {unit}", fmt_value(vb)),
                ratio,
                of_base,
            ))
        })
        .collect();
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let wa = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let wb = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    out.push(format!("{:<w$}  {:>wa$}  {:>wb$}  B/A", "figure", "A", "B"));
    for (n, x, y, r, o) in rows {
        out.push(
            format!("{n:<w$}  {x:>wa$}  {y:>wb$}  {r:>6}  {o}")
                .trim_end()
                .to_string(),
        );
    }
    let lb = named(b, "latencies");
    for (name, la) in named(a, "latencies") {
        let Some((_, lbv)) = lb.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let mut line = format!("{name} B/A:");
        for key in ["p50", "p90", "p99", "p99_9", "p99_99", "max"] {
            if let (Some(x), Some(y)) = (num(la, key), num(lbv, key)) {
                if x > 0.0 {
                    line += &format!("  {} {:.3}", key.replace('_', "."), y / x);
                }
            }
        }
        out.push(line);
    }
    out
}

pub fn main(args: &CompareArgs) -> Result<(), BenchError> {
    let a = load(&args.a)?;
    let b = load(&args.b)?;
    println!(
        "A = {} ({})",
        args.a.display(),
        a.get("mode").and_then(Value::as_str).unwrap_or("?")
    );
    println!(
        "B = {} ({})",
        args.b.display(),
        b.get("mode").and_then(Value::as_str).unwrap_or("?")
    );
    for l in compare(&a, &b) {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_of_matching_figures() {
        let a = json!({"figures": [
            {"name": "produce_throughput", "value": 100.0, "unit": "MB/s", "ratio": 0.5},
            {"name": "only_a", "value": 1.0, "unit": "x"}],
            "latencies": [{"name": "e2e_latency", "p50": 10.0, "p99": 100.0}]});
        let b = json!({"figures": [
            {"name": "produce_throughput", "value": 150.0, "unit": "MB/s", "ratio": 0.6}],
            "latencies": [{"name": "e2e_latency", "p50": 20.0, "p99": 50.0}]});
        let out = compare(&a, &b).join("\n");
        assert!(out.contains("1.500"), "{out}");
        assert!(out.contains("baseline ratio 0.500 -> 0.600"), "{out}");
        assert!(!out.contains("only_a"), "{out}");
        assert!(
            out.contains("p50 2.000") && out.contains("p99 0.500"),
            "{out}"
        );
    }
}
