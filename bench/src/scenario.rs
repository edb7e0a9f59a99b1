//! `strom-bench run FILE.toml [FLAGS...]`: a scenario file names a mode and
//! sets that mode's flags, with the flag names written with underscores:
//!
//! ```toml
//! mode = "produce"            # produce | consume | e2e | requests | kafka
//! description = "1 KiB records, batches of 1,000, acks=leader"
//! message_size = 1024
//! batch_records = 1000
//! client_cores = [0, 1]       # arrays become comma lists
//! verify = true               # true adds the flag, false leaves it out
//! ```
//!
//! Flags given after the file are appended, so they win where the mode
//! takes a flag once (e.g. `--server`, `--spawn`, `--duration 60`).

use std::path::{Path, PathBuf};

use crate::report::BenchError;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// The scenario file.
    pub file: PathBuf,
    /// More flags for the mode (after the file's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

fn cfg(path: &Path, msg: impl std::fmt::Display) -> BenchError {
    BenchError::Config(format!("scenario {}: {msg}", path.display()))
}

/// Boolean flags that take a value rather than being switches.
const VALUED_BOOLS: &[&str] = &["stamp", "wrap"];

/// The command line (without the program name) the scenario stands for.
pub fn argv(path: &Path, text: &str, extra: &[String]) -> Result<Vec<String>, BenchError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| cfg(path, e))?;
    let mode = table
        .get("mode")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| {
            cfg(
                path,
                "needs mode = \"produce\" | \"consume\" | \"e2e\" | \"requests\" | \"kafka\"",
            )
        })?;
    if !matches!(mode, "produce" | "consume" | "e2e" | "requests" | "kafka") {
        return Err(cfg(path, format!("unknown mode {mode:?}")));
    }
    let mut out = vec![mode.to_string()];
    let has_name = table.contains_key("name");
    for (k, v) in &table {
        if k == "mode" || k == "description" {
            continue;
        }
        let flag = format!("--{}", k.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String, BenchError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(cfg(path, format!("{k}: unsupported value {other}"))),
            }
        };
        match v {
            // Flags that take a value (`--wrap false`), unlike switches.
            toml::Value::Boolean(b) if VALUED_BOOLS.contains(&k.as_str()) => {
                out.push(flag);
                out.push(b.to_string());
            }
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
                // Repeatable string flags (server_arg, topic_config) take one
                // value each; numeric lists are comma separated.
                if items.iter().all(|i| i.is_str()) {
                    for p in parts {
                        out.push(format!("{flag}={p}"));
                    }
                } else {
                    out.push(flag);
                    out.push(parts.join(","));
                }
            }
            other => {
                out.push(flag);
                out.push(scalar(other)?);
            }
        }
    }
    if !has_name {
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            out.push("--name".into());
            out.push(stem.to_string());
        }
    }
    out.extend(extra.iter().cloned());
    Ok(out)
}

pub fn load(args: &RunArgs) -> Result<Vec<String>, BenchError> {
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| BenchError::io("read", &args.file, e))?;
    argv(&args.file, &text, &args.extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_to_flags() {
        let text = r#"
mode = "produce"
description = "x"
message_size = 100
client_cores = [0, 1]
verify = true
stamp = false
linger_ms = 0.5
topic_config = ["flush.policy=never"]
"#;
        let v = argv(Path::new("small.toml"), text, &["--spawn".into()]).unwrap();
        assert_eq!(v[0], "produce");
        let s = v.join(" ");
        assert!(s.contains("--message-size 100"), "{s}");
        assert!(s.contains("--client-cores 0,1"), "{s}");
        assert!(s.contains("--verify"), "{s}");
        assert!(s.contains("--stamp false"), "{s}");
        assert!(s.contains("--linger-ms 0.5"), "{s}");
        assert!(s.contains("--topic-config=flush.policy=never"), "{s}");
        assert!(s.contains("--name small"), "{s}");
        assert!(s.ends_with("--spawn"), "{s}");
        assert!(argv(Path::new("x.toml"), "mode = \"run\"", &[]).is_err());
    }
}
