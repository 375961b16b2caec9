//! A QMP client for the guest tests: one command per connection (QEMU's `-qmp
//! unix:PATH,server=on,wait=off` serves one client at a time), answers as JSON values.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The QEMU flags that serve QMP on `sock`.
pub fn qmp_args(sock: &Path) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]
}

/// A QEMU's QMP socket.
#[derive(Clone, Debug)]
pub struct Qmp {
    pub sock: PathBuf,
}

impl Qmp {
    pub fn new(sock: PathBuf) -> Qmp {
        Qmp { sock }
    }

    /// Runs `execute` with `arguments`; `Ok(return)` or `Err(the error or what failed)`.
    pub fn try_cmd(&self, execute: &str, arguments: Value) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot connect to {}: {e}", self.sock.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        let mut next = || -> Result<Value, String> {
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("QMP closed the connection".into());
                }
                let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
                if v.get("event").is_none() {
                    return Ok(v);
                }
            }
        };
        next()?; // the greeting
        let mut send = |v: Value| writer.write_all(format!("{v}\n").as_bytes());
        send(serde_json::json!({"execute": "qmp_capabilities"})).map_err(|e| e.to_string())?;
        next()?;
        send(serde_json::json!({"execute": execute, "arguments": arguments}))
            .map_err(|e| e.to_string())?;
        let answer = next()?;
        match answer.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("{execute}: {answer}")),
        }
    }

    /// Like [`Qmp::try_cmd`]; panics on an error.
    pub fn cmd(&self, execute: &str, arguments: Value) -> Value {
        self.try_cmd(execute, arguments)
            .unwrap_or_else(|e| panic!("QMP {}: {e}", self.sock.display()))
    }

    /// `query-migrate`'s answer.
    pub fn migration(&self) -> Value {
        self.cmd("query-migrate", serde_json::json!({}))
    }

    /// Waits up to `timeout` for the migration's status to be one of `states`; returns the
    /// last `query-migrate` answer.
    pub fn wait_migration(&self, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.migration();
            let status = m["status"].as_str().unwrap_or("none").to_string();
            if states.contains(&status.as_str()) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "migration status still {status} after {timeout:?}, waiting for {states:?}: {m}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `query-status`'s `status` (running, paused, postmigrate, inmigrate, ...).
    pub fn run_state(&self) -> String {
        self.cmd("query-status", serde_json::json!({}))["status"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }
}
