//! The `strom` CLI against a real server: the README quickstart, run as
//! written, and the options and exit codes around it.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use strom_tests::{bin_dir, run_with_timeout, strom_bin, workspace_root, TestServer};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Marks the document whose `sh` blocks are the verified quickstart.
const MARKER: &str = "Verified by tests/tests/cli.rs";

/// The quickstart document: README.md once the quickstart is merged into
/// it, docs/quickstart.md until then.
fn quickstart_doc() -> (PathBuf, String) {
    let root = workspace_root();
    for p in [root.join("README.md"), root.join("docs/quickstart.md")] {
        if let Ok(text) = std::fs::read_to_string(&p) {
            if text.contains(MARKER) {
                return (p, text);
            }
        }
    }
    panic!("no README.md or docs/quickstart.md containing {MARKER:?}");
}

/// (command, expected output) pairs from the `sh` blocks, in order.
fn quickstart_steps(doc: &str) -> Vec<(String, Option<String>)> {
    let mut steps: Vec<(String, Option<String>)> = Vec::new();
    let mut block: Option<(String, Vec<String>)> = None;
    let mut last_was_sh = false;
    for line in doc.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            match block.take() {
                None => block = Some((fence.trim().to_owned(), Vec::new())),
                Some((lang, lines)) => {
                    match lang.as_str() {
                        "sh" => {
                            for l in lines {
                                let l = l.trim();
                                if !l.is_empty() && !l.starts_with('#') {
                                    steps.push((l.to_owned(), None));
                                }
                            }
                            last_was_sh = true;
                            continue;
                        }
                        "text" if last_was_sh => {
                            let step = steps.last_mut().expect("a command before its output");
                            step.1 = Some(lines.join("\n") + "\n");
                        }
                        _ => {}
                    }
                    last_was_sh = false;
                }
            }
        } else if let Some((_, lines)) = block.as_mut() {
            lines.push(line.to_owned());
        } else if !line.trim().is_empty() {
            last_was_sh = false;
        }
    }
    steps
}

fn shell(addr: &str, command: &str, stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("PATH", path)
        .env("STROM_SERVER", addr);
    run_with_timeout(&mut cmd, stdin, STEP_TIMEOUT)
}

#[test]
fn readme_quickstart_runs_as_written() {
    strom_bin(); // builds the binaries if needed
    let (path, doc) = quickstart_doc();
    let steps = quickstart_steps(&doc);
    assert!(
        steps.iter().any(|s| s.0.contains("strom produce"))
            && steps.iter().any(|s| s.0.contains("strom consume"))
            && steps.iter().any(|s| s.0.contains("strom topic create")),
        "{} lost its quickstart commands: {steps:?}",
        path.display()
    );
    let server = TestServer::start(2);
    for (command, expected) in &steps {
        let (code, out, err) = shell(server.addr(), command, b"");
        assert_eq!(code, 0, "`{command}` failed: {err}");
        if let Some(expected) = expected {
            assert_eq!(
                String::from_utf8_lossy(&out),
                *expected,
                "output of `{command}` differs from {}",
                path.display()
            );
        }
    }
}

fn strom(addr: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut cmd = Command::new(strom_bin());
    cmd.args(args).arg("--server").arg(addr);
    let (code, out, err) = run_with_timeout(&mut cmd, stdin, STEP_TIMEOUT);
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

#[test]
fn produce_and_consume_options_and_exit_codes() {
    let server = TestServer::start(1);
    let a = server.addr();
    assert_eq!(
        strom(
            a,
            &[
                "topic",
                "create",
                "t",
                "--partitions",
                "2",
                "--config",
                "retention.ms=3600000"
            ],
            b""
        )
        .0,
        0
    );

    // Errors: exit 1 with a message naming the problem.
    let (code, _, err) = strom(a, &["topic", "create", "t", "--partitions", "2"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("TopicAlreadyExists"), "{err}");
    let (code, _, err) = strom(a, &["consume", "missing", "--count", "1"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("UnknownTopic"), "{err}");
    let (code, _, err) = strom(a, &["produce", "t", "--partition", "9"], b"x\n");
    assert_eq!(code, 1);
    assert!(err.contains("partition 9"), "{err}");
    let (code, _, err) = strom(a, &["consume", "t", "--bogus-flag"], b"");
    assert_eq!(code, 1, "usage errors exit 1: {err}");

    // Explicit partition, offsets printed, every ack level.
    let (code, out, err) = strom(
        a,
        &[
            "produce",
            "t",
            "--partition",
            "1",
            "--print-offsets",
            "--acks",
            "durable",
        ],
        b"one\ntwo\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1 0\n1 1\n");
    let (code, out, _) = strom(
        a,
        &[
            "produce",
            "t",
            "--partition",
            "1",
            "--print-offsets",
            "--acks",
            "none",
        ],
        b"three\n",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, ""),
        "acks=none reports no offsets"
    );
    let (code, _, err) = strom(
        a,
        &[
            "produce",
            "t",
            "--partition",
            "1",
            "--key-separator",
            "=",
            "--acks",
            "leader",
        ],
        b"k=four\n",
    );
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = strom(
        a,
        &[
            "consume",
            "t",
            "--partition",
            "1",
            "--offset",
            "1",
            "--count",
            "3",
            "--format",
            "{partition}/{offset} {key}={value} [{headers}]",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1/1 null=two []\n1/2 null=three []\n1/3 k=four []\n");

    // Idempotent producing (partition 0 is still empty).
    let (code, out, err) = strom(
        a,
        &[
            "produce",
            "t",
            "--partition",
            "0",
            "--idempotent",
            "--print-offsets",
        ],
        b"i1\ni2\n",
    );
    assert_eq!((code, out.as_str()), (0, "0 0\n0 1\n"), "{err}");
    let (code, _, err) = strom(
        a,
        &["produce", "t", "--idempotent", "--acks", "none"],
        b"x\n",
    );
    assert_eq!(code, 1, "idempotence needs acks: {err}");
    assert!(err.contains("acks"), "{err}");

    // Groups: the second run resumes where the first stopped.
    let args = [
        "consume",
        "t",
        "--partition",
        "1",
        "--from-beginning",
        "--group",
        "g",
        "--count",
        "2",
    ];
    let (code, out, err) = strom(a, &args, b"");
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"), "{err}");
    let (code, out, err) = strom(a, &args, b"");
    assert_eq!((code, out.as_str()), (0, "three\nfour\n"), "{err}");

    let (code, out, _) = strom(a, &["topic", "describe", "t"], b"");
    assert_eq!(code, 0);
    assert!(
        out.contains("Partition: 1") && out.contains("HighWatermark: 4"),
        "{out}"
    );
    assert_eq!(strom(a, &["topic", "delete", "t"], b"").0, 0);
    let (_, out, _) = strom(a, &["topic", "list"], b"");
    assert_eq!(out, "");
}
