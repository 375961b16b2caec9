//! `sharedisk ctl` run as a user runs it, against a daemon process.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub struct CtlOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// The `--json` answer.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "ctl failed: {}{}", self.stdout, self.stderr);
        self
    }
}

/// Runs `sharedisk ARGS`.
pub fn sharedisk(args: &[&str]) -> CtlOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_sharedisk"))
        .args(args)
        .output()
        .expect("run sharedisk");
    CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `sharedisk ctl --socket SOCKET ARGS`.
pub fn ctl(socket: &Path, args: &[&str]) -> CtlOutput {
    let mut all = vec!["ctl", "--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    sharedisk(&all)
}

/// Runs `sharedisk ctl --socket SOCKET --json ARGS` and returns the answer; asserts exit 0.
#[track_caller]
pub fn ctl_json(socket: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ctl(socket, &all).ok().json()
}
