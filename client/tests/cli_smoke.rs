//! The `strom` binary's own smoke test: help, version, and a clear exit 1
//! when no server listens. (Also makes `cargo test` build the binary, which
//! the end-to-end tests in `tests/` run.)

use std::process::Command;

fn strom() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strom"))
}

#[test]
fn help_and_version_exit_zero() {
    let out = strom().arg("--help").output().expect("run strom");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["topic", "produce", "consume", "group", "--server"] {
        assert!(help.contains(word), "help lacks {word}: {help}");
    }
    let out = strom()
        .args(["consume", "--help"])
        .output()
        .expect("run strom");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("group coordinator") && help.contains("--session-timeout-ms"),
        "{help}"
    );
    assert!(strom()
        .arg("--version")
        .output()
        .expect("run")
        .status
        .success());
}

#[test]
fn no_server_is_exit_one_with_a_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let out = strom()
        .args(["topic", "list", "--server", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run strom");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("strom: ") && err.contains("connect"),
        "{err}"
    );
}
