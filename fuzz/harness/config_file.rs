//! Configuration files: any text through the file parser and its meeting with the `serve` flags
//! (`Flags::resolve_text`, what `config check` and `serve --config` run), alone and with flags
//! that agree or clash, then `describe` (what `config check` prints) of what resolves.
//!
//! Input: the first byte picks the flags (bit 0: `--guests vm1`, bit 1: `--image /srv/disk.img`,
//! bit 2: `--admin-group wheel`, bit 3: `--socket-mode 0660`); the rest is the file, as UTF-8
//! (other bytes: the file could not be read as text, which `resolve` reports before parsing).
//!
//! Checks: no panic; an error names the file; a configuration that resolves validates, names
//! only guests that make safe socket file names (inside the socket directory), and describes
//! itself naming every guest.

use std::path::Path;

use sharedisk::config::{valid_guest_name, Flags};

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let bit = |n: u8| pick & (1 << n) != 0;
    let flags = Flags {
        guests: bit(0).then(|| vec!["vm1".to_string()]),
        image: bit(1).then(|| "/srv/disk.img".into()),
        admin_group: bit(2).then(|| "wheel".to_string()),
        socket_mode: bit(3).then_some(0o660),
        ..Flags::default()
    };
    let path = Path::new("/etc/sharedisk/fuzz.toml");
    let resolved = flags.resolve_text(path, text);
    if super::tracing() {
        eprintln!("{text:?}: {resolved:?}");
    }
    match resolved {
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
        }
        Ok(c) => {
            assert!(c.validate().is_ok());
            assert!(!c.guests.is_empty() && c.guests.len() <= c.max_shares);
            let described = c.describe();
            for g in c.guest_names() {
                assert!(valid_guest_name(&g), "{g:?}");
                let sock = c.blk_socket(&g);
                assert_eq!(sock.parent(), Some(c.socket_dir.as_path()), "{g:?}");
                assert!(described.contains(&g), "{g:?} missing from {described}");
            }
            let _ = (c.state_path(), c.control_socket_path());
        }
    }
}
