//! The committed generated code must be exactly what flatc 25.12.19 makes of
//! the committed schemas. Runs the regenerate script into a temp dir and
//! compares; where flatc is absent it fails under `CI=true` and is recorded as
//! skipped elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().contains("__pycache__") {
                out.push(p.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The skip rule of `strom_tests::skip_test` (this crate cannot depend on
/// the harness, which depends on it): a failure under `CI=true`, a line in
/// `$STROM_SKIP_LOG` elsewhere.
fn skip(reason: &str) {
    const TEST: &str = "generated_code_matches_schemas";
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{TEST} cannot run under CI=true: {reason}"
    );
    println!("SKIPPED {TEST}: {reason}");
    if let Some(path) = std::env::var_os("STROM_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{TEST}: {reason}\n");
        let recorded = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = recorded {
            eprintln!("cannot record the skip of {TEST} in {path:?}: {e}");
        }
    }
}

#[test]
fn generated_code_matches_schemas() {
    let version = Command::new("flatc").arg("--version").output();
    match version {
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "flatc version 25.12.19" => {}
        Ok(o) => {
            return skip(&format!(
                "flatc is {:?}, need 25.12.19",
                String::from_utf8_lossy(&o.stdout).trim()
            ))
        }
        Err(e) => return skip(&format!("flatc not installed ({e})")),
    }
    let root = repo_root();
    let tmp = std::env::temp_dir().join(format!("strom-regen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new(root.join("scripts/regen-flatbuffers"))
        .arg(&tmp)
        .status()
        .expect("run regen script");
    assert!(status.success(), "regen script failed");
    for sub in ["flatbuffers/src/generated", "client/python/strom_fb"] {
        let fresh = files_under(&tmp.join(sub));
        let committed = files_under(&root.join(sub));
        assert_eq!(fresh, committed, "generated file set differs under {sub}");
        for f in &fresh {
            let a = std::fs::read(tmp.join(sub).join(f)).expect("read fresh");
            let b = std::fs::read(root.join(sub).join(f)).expect("read committed");
            assert!(
                a == b,
                "{sub}/{} is out of date: run scripts/regen-flatbuffers",
                f.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
