//! Guests added and removed at run time (`sharedisk ctl guest add|remove`), kept beside the PR
//! state in `<state file>.guests` so that a restart serves the same guests. The configuration
//! file is never rewritten: at start the changes are applied over it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, GuestConfig};

#[derive(Serialize, Deserialize, Default, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestChanges {
    /// Guests added at run time, in order.
    #[serde(default)]
    pub added: Vec<GuestConfig>,
    /// Guests of the configuration removed at run time.
    #[serde(default)]
    pub removed: Vec<String>,
}

pub fn path_for(config: &Config) -> PathBuf {
    let mut p = config.state_path().into_os_string();
    p.push(".guests");
    PathBuf::from(p)
}

impl GuestChanges {
    /// The saved changes; none when there is no file.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: {e} (move the file away to drop the run-time guest changes)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GuestChanges::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Applies the changes to the configured guests.
    pub fn apply(&self, config: &mut Config) {
        config.guests.retain(|g| !self.removed.contains(&g.name));
        for g in &self.added {
            if config.guest(&g.name).is_none() {
                config.guests.push(g.clone());
            }
        }
    }

    pub fn note_added(&mut self, guest: &GuestConfig) {
        self.removed.retain(|n| *n != guest.name);
        self.added.retain(|g| g.name != guest.name);
        self.added.push(guest.clone());
    }

    pub fn note_removed(&mut self, name: &str) {
        let was_added = self.added.iter().any(|g| g.name == name);
        self.added.retain(|g| g.name != name);
        if !was_added && !self.removed.iter().any(|n| n == name) {
            self.removed.push(name.to_string());
        }
    }

    /// Replaces the file atomically and durably.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::util::atomic_file::save(path, &bytes, "guests")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_over_the_configuration() {
        let mut c = Config::new("d.img", "/tmp", &["vm1", "vm2"]);
        let mut ch = GuestChanges::default();
        let mut vm3 = GuestConfig::new("vm3");
        vm3.read_only = true;
        ch.note_added(&vm3);
        ch.note_removed("vm1");
        ch.note_added(&GuestConfig::new("vm4"));
        ch.note_removed("vm4");
        assert_eq!(ch.removed, ["vm1"]);
        ch.apply(&mut c);
        assert_eq!(c.guest_names(), ["vm2", "vm3"]);
        assert!(c.guest("vm3").unwrap().read_only);
        ch.note_added(&GuestConfig::new("vm1"));
        assert!(ch.removed.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.guests");
        assert_eq!(GuestChanges::load(&p).unwrap(), GuestChanges::default());
        ch.save(&p).unwrap();
        assert_eq!(GuestChanges::load(&p).unwrap(), ch);
    }
}
