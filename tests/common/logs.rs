//! Waiting for a daemon's log to say something.

use std::time::{Duration, Instant};

/// Waits up to `within` for a line of `log()` that contains `marker`; returns the first word
/// after the marker (a name the daemon logged), or `None` when no such line came in time.
pub fn word_after(log: impl Fn() -> String, marker: &str, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    loop {
        if let Some(line) = log().lines().find(|l| l.contains(marker)) {
            let rest = line.split(marker).nth(1).unwrap_or_default();
            return Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
