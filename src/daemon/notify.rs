//! systemd's notifications (sd_notify): READY once every socket listens, STATUS= lines while
//! serving, STOPPING at the end.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use signal_hook::iterator::Handle;

/// Tells the service manager `states`; without one (not under systemd) this does nothing.
pub(super) fn notify(states: &[sd_notify::NotifyState]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, states) {
        log::warn!(
            "cannot notify the service manager at NOTIFY_SOCKET={}: {e}; systemd may time the \
             start out or miss the stop",
            socket.to_string_lossy()
        );
    }
}

/// The address `NOTIFY_SOCKET` names (sd_notify(3)): a path, or with a leading `@` a name in
/// the abstract namespace.
fn notify_address(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor @ and an abstract name",
        )),
    }
}

/// Sends `states` as one datagram, a `KEY=value` line each.
fn send(socket: &OsStr, states: &[sd_notify::NotifyState]) -> io::Result<()> {
    let addr = notify_address(socket)?;
    let mut msg = String::new();
    for s in states {
        // Writing to a String cannot fail.
        let _ = writeln!(msg, "{s}");
    }
    let sent = UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the datagram was cut short",
        ));
    }
    Ok(())
}

/// Sends `status()` as STATUS= whenever it changes, looking every 500 ms, until `signals` is
/// closed.
pub(super) fn spawn_status(
    signals: Handle,
    status: impl Fn() -> String + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("notify-status".into())
        .spawn(move || {
            let mut last = String::new();
            while !signals.is_closed() {
                let line = status();
                if line != last {
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    last = line;
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
}

#[cfg(test)]
mod tests;
