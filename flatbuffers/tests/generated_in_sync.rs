//! The committed generated code must be exactly what flatc 25.12.19 makes of
//! the committed schemas. Runs the regenerate script into a temp dir and
//! compares; skipped (with a printed reason) only where flatc is absent.

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

#[test]
fn generated_code_matches_schemas() {
    let version = Command::new("flatc").arg("--version").output();
    match version {
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "flatc version 25.12.19" => {}
        Ok(o) => {
            eprintln!(
                "SKIP generated_code_matches_schemas: flatc is {:?}, need 25.12.19",
                String::from_utf8_lossy(&o.stdout).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP generated_code_matches_schemas: flatc not installed ({e})");
            return;
        }
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
