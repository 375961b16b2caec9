//! The TOML file (`serve --config FILE`): its layout for serde, and where each key sits, so
//! that every message names the file, the line and the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    check_poll_us, parse_aio, parse_mode, parse_size, valid_guest_name, Aio, ClusterConfig, Config,
    ConfigError, GuestConfig, DEFAULT_MAX_SHARES, DEFAULT_POLL_US, DEFAULT_QUEUES,
    DEFAULT_SOCKET_DIR,
};

/// The file's layout; unknown keys are errors.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    image: Option<ImageSection>,
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    guest: Vec<GuestEntry>,
    cluster: Option<ClusterConfig>,
    iscsi: Option<super::iscsi::IscsiSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageSection {
    path: PathBuf,
    #[serde(default, deserialize_with = "size_value")]
    size: Option<u64>,
    state: Option<PathBuf>,
    #[serde(default)]
    read_only: bool,
    max_shares: Option<usize>,
    #[serde(default)]
    direct: bool,
    #[serde(default, deserialize_with = "aio_value")]
    aio: Option<Aio>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    socket_dir: Option<PathBuf>,
    socket_group: Option<String>,
    #[serde(default, deserialize_with = "mode_value")]
    socket_mode: Option<u32>,
    #[serde(default)]
    socket_world_access: bool,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    admin_group: Option<String>,
    metrics_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "poll_value")]
    poll_us: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestEntry {
    #[serde(deserialize_with = "guest_name")]
    name: Spanned<String>,
    #[serde(default)]
    read_only: bool,
    queues: Option<u16>,
    scsi: Option<bool>,
}

/// `size = "1G"` or `size = 1073741824`.
fn size_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let s = match Size::deserialize(d)? {
        Size::Bytes(b) => b.to_string(),
        Size::Text(t) => t,
    };
    parse_size(&s).map(Some).map_err(serde::de::Error::custom)
}

fn aio_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Aio>, D::Error> {
    let s = String::deserialize(d)?;
    parse_aio(&s).map(Some).map_err(serde::de::Error::custom)
}

fn poll_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let us = u32::deserialize(d)?;
    check_poll_us(us)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn mode_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let s = String::deserialize(d)?;
    parse_mode(&s).map(Some).map_err(serde::de::Error::custom)
}

fn guest_name<'de, D: Deserializer<'de>>(d: D) -> Result<Spanned<String>, D::Error> {
    let name = Spanned::<String>::deserialize(d)?;
    if !valid_guest_name(name.get_ref()) {
        return Err(serde::de::Error::custom(ConfigError::BadName(
            name.get_ref().clone(),
        )));
    }
    Ok(name)
}

/// A configuration file's text with its parsed tables, which know where each key sits.
pub(super) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
    /// As much of the text as parses (the serde error says what does not).
    tables: DeTable<'a>,
}

impl<'a> Source<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        let tables = DeTable::parse_recoverable(text).0.into_inner();
        Source { path, text, tables }
    }

    pub(super) fn path(&self) -> &Path {
        self.path
    }

    /// The 1-based line holding byte `offset`.
    fn line(&self, offset: usize) -> usize {
        let text = self.text.as_bytes();
        text[..offset.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Whether the file sets `dotted` (`section.key`).
    pub(super) fn has(&self, dotted: &str) -> bool {
        self.key_span(dotted).is_some()
    }

    /// `FILE:LINE` of the line setting `dotted`, or `FILE` when the file does not set it.
    pub(super) fn at(&self, dotted: &str) -> String {
        self.at_span(self.key_span(dotted))
    }

    /// `FILE:LINE` of the `[[guest]]` entry named `name`, or `FILE`.
    pub(super) fn at_guest(&self, name: &str) -> String {
        let span = self.table_entries("guest").find_map(|t| {
            t.iter()
                .find(|(k, v)| k.get_ref() == "name" && v.get_ref().as_str() == Some(name))
                .map(|(_, v)| v.span())
        });
        self.at_span(span)
    }

    fn at_span(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(s) => format!("{}:{}", self.path.display(), self.line(s.start)),
            None => self.path.display().to_string(),
        }
    }

    /// The tables under `section`: the section itself, or each entry of an array of tables.
    fn table_entries(&self, section: &str) -> impl Iterator<Item = &DeTable<'a>> {
        let value = self
            .tables
            .iter()
            .find(|(k, _)| k.get_ref() == section)
            .map(|(_, v)| v.get_ref());
        let (table, array) = match value {
            Some(DeValue::Table(t)) => (Some(t), None),
            Some(DeValue::Array(a)) => {
                (None, Some(a.iter().filter_map(|v| v.get_ref().as_table())))
            }
            _ => (None, None),
        };
        table.into_iter().chain(array.into_iter().flatten())
    }

    /// Where the key `dotted` (`section.key`) is written: in the first table that sets it.
    fn key_span(&self, dotted: &str) -> Option<Range<usize>> {
        let (section, key) = dotted.rsplit_once('.')?;
        self.table_entries(section)
            .find_map(|t| t.iter().find(|(k, _)| k.get_ref() == key))
            .map(|(k, _)| k.span())
    }

    /// The dotted key whose name or value holds byte `offset`, innermost first (entries of an
    /// array of tables are named by the array's key: `guest.name`).
    fn key_at(&self, offset: usize) -> Option<String> {
        fn walk(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
            for (k, v) in table {
                let name = match prefix {
                    "" => k.get_ref().to_string(),
                    p => format!("{p}.{}", k.get_ref()),
                };
                if k.span().contains(&offset) {
                    return Some(name);
                }
                let inner = match v.get_ref() {
                    DeValue::Table(t) => walk(t, offset, &name),
                    DeValue::Array(a) => a
                        .iter()
                        .filter_map(|e| e.get_ref().as_table())
                        .find_map(|t| walk(t, offset, &name)),
                    _ => None,
                };
                if inner.is_some() {
                    return inner;
                }
                if v.span().contains(&offset) {
                    return Some(name);
                }
            }
            None
        }
        walk(&self.tables, offset, "")
    }

    /// The key an error's line names when the parsed tables do not hold it (a syntax error, a
    /// duplicate key, a table header): the header itself, or the nearest header above plus the
    /// name before the `=`. Only for naming the key in a message; the tables are the truth.
    fn key_on_line(&self, offset: usize) -> Option<String> {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("").trim();
        let header = |l: &str| {
            l.starts_with('[').then(|| {
                l.split('#')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['[', ']'])
                    .trim()
                    .to_string()
            })
        };
        if let Some(h) = header(line) {
            return Some(h);
        }
        let key = line.split('=').next()?.trim().trim_matches('"');
        let section = self.text[..start]
            .lines()
            .rev()
            .find_map(|l| header(l.trim()));
        match (section, key.is_empty()) {
            (section, true) => section,
            (Some(s), false) => Some(format!("{s}.{key}")),
            (None, false) => Some(key.to_string()),
        }
    }

    /// `FILE:LINE: key `section.key`: what is wrong`, from a TOML or serde error and its span.
    fn error(&self, e: &toml::de::Error) -> ConfigError {
        let msg = e.message().trim().to_string();
        let Some(span) = e.span() else {
            return ConfigError::File(format!("{}: {msg}", self.path.display()));
        };
        let key = self
            .key_at(span.start)
            .or_else(|| self.key_on_line(span.start))
            .map(|k| format!(" key `{k}`:"))
            .unwrap_or_default();
        ConfigError::File(format!(
            "{}:{}:{key} {msg}",
            self.path.display(),
            self.line(span.start)
        ))
    }
}

/// The configuration a file gives, before flags and validation; paths in it are relative to
/// the file.
pub(super) fn parse(src: &Source<'_>) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(src.text).map_err(|e| src.error(&e))?;
    let Some(image) = file.image else {
        return Err(ConfigError::File(format!(
            "{}: missing [image] section (with at least `path`)",
            src.path.display()
        )));
    };
    // Relative paths in a file are relative to the file, not to wherever the daemon starts.
    let base = src.path.parent().unwrap_or(Path::new("."));
    let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
    let mut seen = BTreeSet::new();
    let mut guests = Vec::new();
    for g in file.guest {
        let span = g.name.span();
        let name = g.name.into_inner();
        if !seen.insert(name.clone()) {
            return Err(ConfigError::File(format!(
                "{}:{}: key `guest.name`: guest {name:?} is named twice",
                src.path.display(),
                src.line(span.start)
            )));
        }
        guests.push(GuestConfig {
            queues: g.queues.unwrap_or(DEFAULT_QUEUES),
            read_only: g.read_only,
            scsi: g.scsi.unwrap_or(true),
            name,
        });
    }
    let server = file.server;
    let iscsi = file
        .iscsi
        .map(|i| i.into_config(&rel))
        .transpose()
        .map_err(|e| ConfigError::File(format!("{}: {e}", src.path.display())))?;
    Ok(Config {
        image: rel(image.path),
        size: image.size,
        socket_dir: rel(server
            .socket_dir
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.into())),
        guests,
        read_only: image.read_only,
        max_shares: image.max_shares.unwrap_or(DEFAULT_MAX_SHARES),
        state: image.state.map(rel),
        reset_reservations: false,
        scsi: true,
        socket_group: server.socket_group,
        socket_mode: server.socket_mode,
        socket_world_access: server.socket_world_access,
        control_socket: server.control_socket.map(rel),
        control_group: server.control_group,
        admin_group: server.admin_group,
        metrics_listen: server.metrics_listen,
        aio: image.aio,
        poll_us: server.poll_us.unwrap_or(DEFAULT_POLL_US),
        // Page caches are per host: in cluster mode every host must read the disk itself.
        direct: image.direct || file.cluster.is_some(),
        cluster: file.cluster.map(|c| rel_state_dir(c, &rel)),
        iscsi,
    })
}

/// A relative `cluster.state_dir`, `ca_file`, `cert_file`, `key_file` or `password_file` is
/// relative to the file, like every other path in it.
#[cfg(feature = "cluster")]
fn rel_state_dir(mut c: ClusterConfig, rel: &dyn Fn(PathBuf) -> PathBuf) -> ClusterConfig {
    c.state_dir = c.state_dir.map(rel);
    c.ca_file = c.ca_file.map(rel);
    c.cert_file = c.cert_file.map(rel);
    c.key_file = c.key_file.map(rel);
    c.password_file = c.password_file.map(rel);
    c
}

#[cfg(not(feature = "cluster"))]
fn rel_state_dir(c: ClusterConfig, _: &dyn Fn(PathBuf) -> PathBuf) -> ClusterConfig {
    c
}
