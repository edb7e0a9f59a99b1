//! A test that cannot run (a missing tool) must never pass silently: under
//! `CI=true` [`strom_tests::skip_test`] fails it, elsewhere it records the
//! skip in `$STROM_SKIP_LOG`, which `scripts/test` prints at the end.
//!
//! The story: kcat, the Python packages and the loop mount tests used to
//! print `SKIPPED` and pass, so a green CI run did not show what ran. This
//! test runs its own executable again with a probe test that skips, once
//! with `CI=true` (the run must fail) and once without (it must pass and
//! leave a line in the skip log).

use std::process::Command;
use strom_tests::{skip_test, unique_name, SKIP_LOG_ENV};

const PROBE_ENV: &str = "STROM_SKIP_PROBE";

/// Run only as a child of the test below (ignored in ordinary runs).
#[test]
#[ignore = "a probe run as a child process by a_skipped_test_fails_under_ci_and_is_listed_elsewhere"]
fn probe_that_skips() {
    assert!(
        std::env::var_os(PROBE_ENV).is_some(),
        "run only by a_skipped_test_fails_under_ci_and_is_listed_elsewhere"
    );
    skip_test("probe_that_skips", "the probe's tool is missing");
}

fn run_probe(ci: bool, log: &std::path::Path) -> std::process::Output {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", "probe_that_skips", "--nocapture"])
        .env(PROBE_ENV, "1")
        .env(SKIP_LOG_ENV, log)
        .env_remove("CI");
    if ci {
        cmd.env("CI", "true");
    }
    cmd.output().expect("run the probe")
}

#[test]
fn a_skipped_test_fails_under_ci_and_is_listed_elsewhere() {
    let log = std::env::temp_dir().join(unique_name("strom-skip-log"));
    let _ = std::fs::remove_file(&log);

    let ci = run_probe(true, &log);
    assert!(
        !ci.status.success(),
        "under CI=true a skipping test must fail; stdout:\n{}",
        String::from_utf8_lossy(&ci.stdout)
    );
    let ci_out =
        String::from_utf8_lossy(&ci.stdout).into_owned() + &String::from_utf8_lossy(&ci.stderr);
    assert!(
        ci_out.contains("cannot run under CI=true: the probe's tool is missing"),
        "the failure names the reason: {ci_out}"
    );
    assert!(!log.exists(), "a failed run is not a skip");

    let local = run_probe(false, &log);
    assert!(
        local.status.success(),
        "outside CI a skip passes; stderr:\n{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let listed = std::fs::read_to_string(&log).expect("skip log written");
    assert_eq!(listed, "probe_that_skips: the probe's tool is missing\n");
    std::fs::remove_file(&log).expect("remove skip log");
}
