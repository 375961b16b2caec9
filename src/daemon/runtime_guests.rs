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

/// Where an older sharedisk kept the changes of a cluster-mode daemon: `<image>.pr.guests`,
/// beside the shared image (and so shared by every host of the disk). `None` where the place did
/// not move: on one host, or with an explicit `state` path.
pub fn legacy_path_for(config: &Config) -> Option<PathBuf> {
    if config.state.is_some() || config.cluster.is_none() {
        return None;
    }
    let mut p = config.image.as_os_str().to_owned();
    p.push(".pr.guests");
    Some(PathBuf::from(p))
}

impl GuestChanges {
    /// [`GuestChanges::load`] from `path`; when there is no file there but one at `legacy` (see
    /// [`legacy_path_for`]), its changes are taken over once, saved at `path` and logged, so
    /// that an upgrade keeps serving the guests added at run time.
    pub fn load_or_import(path: &Path, legacy: Option<&Path>) -> Result<Self, String> {
        let Some(legacy) = legacy.filter(|l| !path.exists() && l.exists()) else {
            return Self::load(path);
        };
        let changes = Self::load(legacy)?;
        log::warn!(
            "run-time guest changes taken over from {} (an older sharedisk kept them there, \
             shared by every host of the disk): check that they are this node's; kept in {} \
             from now on",
            legacy.display(),
            path.display()
        );
        if let Err(e) = changes.save(path) {
            log::warn!(
                "{}: {e}; the changes are read from {} again at the next start",
                path.display(),
                legacy.display()
            );
        }
        Ok(changes)
    }

    /// The saved changes; none when there is no file.
    pub fn load(path: &Path) -> Result<Self, String> {
        match crate::util::atomic_file::read_own(path) {
            Ok(Some(b)) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: {e} (move the file away to drop the run-time guest changes)",
                    path.display()
                )
            }),
            Ok(None) => Ok(GuestChanges::default()),
            Err(e) => Err(e.to_string()),
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
mod tests;
