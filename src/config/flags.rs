//! The `serve` flags, and how they meet a configuration file: a flag may set what the file
//! leaves unset; a flag that contradicts the file is an error naming both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::file::{self, Source};
use super::{
    aio_name, Aio, Config, ConfigError, GuestConfig, DEFAULT_MAX_SHARES, DEFAULT_POLL_US,
    DEFAULT_SOCKET_DIR,
};

/// The `serve` flags, each optional so that a file can supply it instead.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub image: Option<PathBuf>,
    pub size: Option<u64>,
    pub socket_dir: Option<PathBuf>,
    pub guests: Option<Vec<String>>,
    pub read_only: bool,
    pub max_shares: Option<usize>,
    pub state: Option<PathBuf>,
    pub reset_reservations: bool,
    pub socket_group: Option<String>,
    pub socket_mode: Option<u32>,
    pub socket_world_access: bool,
    pub control_socket: Option<PathBuf>,
    pub admin_group: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub direct: bool,
    pub aio: Option<Aio>,
    pub poll_us: Option<u32>,
    /// `--iscsi-listen`: iSCSI portals (each repeat adds one).
    pub iscsi_listen: Vec<SocketAddr>,
    /// `--iscsi-initiator`: initiator names that may log in (each repeat adds one).
    pub iscsi_initiators: Vec<String>,
}

/// One flag beside its file key: the flag, the dotted key, and, when both are given and differ,
/// the two values as the message shows them.
type Agreement = (&'static str, &'static str, Option<(String, String)>);

/// `flag` against `key`: their two values, shown, when both are given and differ.
fn agree<T: PartialEq>(
    (flag, key): (&'static str, &'static str),
    flag_value: Option<T>,
    file_value: Option<T>,
    show: impl Fn(&T) -> String,
) -> Agreement {
    let clash = match (flag_value, file_value) {
        (Some(a), Some(b)) if a != b => Some((show(&a), show(&b))),
        _ => None,
    };
    (flag, key, clash)
}

fn show_path(p: &&PathBuf) -> String {
    p.display().to_string()
}

fn show_string<T: ToString>(v: &T) -> String {
    v.to_string()
}

/// A switch flag shows nothing; the file's `false` that contradicts it shows `false`.
fn show_switch(on: &bool) -> String {
    if *on {
        String::new()
    } else {
        "false".into()
    }
}

impl Flags {
    /// The configuration from the flags alone.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        self.resolve(None)
    }

    /// The configuration from `file` (if any) and the flags. A flag may set what the file
    /// leaves unset; a flag that contradicts the file is an error naming both.
    pub fn resolve(self, file: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = file else {
            return self.alone();
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
        self.resolve_text(path, &text)
    }

    /// [`Flags::resolve`] on a file's `text` already read (`path` names it in messages and
    /// anchors its relative paths).
    pub fn resolve_text(self, path: &Path, text: &str) -> Result<Config, ConfigError> {
        let src = Source::new(path, text);
        let mut c = file::parse(&src)?;
        for (flag, key, clash) in self.agreements(&c, &src) {
            if let Some((flag_val, file_val)) = clash {
                return Err(ConfigError::File(format!(
                    "{flag} {flag_val} disagrees with {}: key `{key}` = {file_val}; change one \
                     of them",
                    src.at(key)
                )));
            }
        }
        self.fill_in(&mut c, &src);
        c.validate().map_err(|e| locate(e, &src))?;
        Ok(c)
    }

    /// The configuration when there is no file.
    fn alone(self) -> Result<Config, ConfigError> {
        let image = self.image.clone().ok_or_else(|| {
            ConfigError::File("no image given: pass --image or --config FILE".into())
        })?;
        let socket_dir = self
            .socket_dir
            .clone()
            .unwrap_or_else(|| DEFAULT_SOCKET_DIR.into());
        let mut c = Config::new(image, socket_dir, &[]);
        c.guests = self
            .guests
            .iter()
            .flatten()
            .map(|g| GuestConfig::new(g))
            .collect();
        c.max_shares = self.max_shares.unwrap_or(DEFAULT_MAX_SHARES);
        c.aio = self.aio;
        c.poll_us = self.poll_us.unwrap_or(DEFAULT_POLL_US);
        self.apply_rest(&mut c);
        c.validate()?;
        Ok(c)
    }

    /// Every flag that has a file key, in the order their disagreements are reported. Settings
    /// with a default count as given by the file only when it writes their key.
    fn agreements(&self, c: &Config, src: &Source<'_>) -> [Agreement; 16] {
        let written = |key| src.has(key);
        let socket_dir = written("server.socket_dir").then_some(&c.socket_dir);
        let guests = (!c.guests.is_empty()).then(|| c.guest_names());
        let max_shares = written("image.max_shares").then_some(c.max_shares);
        let direct = written("image.direct").then_some(c.direct);
        let aio = c.aio.filter(|_| written("image.aio"));
        let poll_us = written("server.poll_us").then_some(c.poll_us);
        let read_only = written("image.read_only").then_some(c.read_only);
        let world = written("server.socket_world_access").then_some(c.socket_world_access);
        let (image, state, control_socket) = (&self.image, &self.state, &self.control_socket);
        let mut aio_row = agree(("--aio", "image.aio"), self.aio, aio, |a| {
            aio_name(*a).into()
        });
        aio_row.2 = aio_row.2.map(|(flag, file)| (flag, format!("{file:?}")));
        [
            agree(
                ("--image", "image.path"),
                image.as_ref(),
                Some(&c.image),
                show_path,
            ),
            agree(("--size", "image.size"), self.size, c.size, show_string),
            agree(
                ("--socket-dir", "server.socket_dir"),
                self.socket_dir.as_ref(),
                socket_dir,
                show_path,
            ),
            agree(
                ("--guests", "guest.name"),
                self.guests.as_ref(),
                guests.as_ref(),
                |g| g.join(","),
            ),
            agree(
                ("--max-shares", "image.max_shares"),
                self.max_shares,
                max_shares,
                show_string,
            ),
            agree(
                ("--state", "image.state"),
                state.as_ref(),
                c.state.as_ref(),
                show_path,
            ),
            agree(
                ("--socket-group", "server.socket_group"),
                self.socket_group.as_ref(),
                c.socket_group.as_ref(),
                show_string,
            ),
            agree(
                ("--socket-mode", "server.socket_mode"),
                self.socket_mode,
                c.socket_mode,
                |m| format!("{m:04o}"),
            ),
            agree(
                ("--socket-world-access", "server.socket_world_access"),
                self.socket_world_access.then_some(true),
                world,
                show_switch,
            ),
            agree(
                ("--control-socket", "server.control_socket"),
                control_socket.as_ref(),
                c.control_socket.as_ref(),
                show_path,
            ),
            agree(
                ("--admin-group", "server.admin_group"),
                self.admin_group.as_ref(),
                c.admin_group.as_ref(),
                show_string,
            ),
            agree(
                ("--metrics-listen", "server.metrics_listen"),
                self.metrics_listen,
                c.metrics_listen,
                show_string,
            ),
            agree(
                ("--direct", "image.direct"),
                self.direct.then_some(true),
                direct,
                show_switch,
            ),
            aio_row,
            agree(
                ("--poll-us", "server.poll_us"),
                self.poll_us,
                poll_us,
                show_string,
            ),
            agree(
                ("--read-only", "image.read_only"),
                self.read_only.then_some(true),
                read_only,
                show_switch,
            ),
        ]
    }

    /// Settings the file leaves unset, from the flags.
    fn fill_in(&self, c: &mut Config, src: &Source<'_>) {
        if let (Some(a), false) = (self.aio, src.has("image.aio")) {
            c.aio = Some(a);
        }
        if let (Some(a), false) = (self.poll_us, src.has("server.poll_us")) {
            c.poll_us = a;
        }
        if let (Some(names), true) = (&self.guests, c.guests.is_empty()) {
            c.guests = names.iter().map(|g| GuestConfig::new(g)).collect();
        }
        if let (Some(d), false) = (&self.socket_dir, src.has("server.socket_dir")) {
            c.socket_dir = d.clone();
        }
        if let (Some(m), false) = (self.max_shares, src.has("image.max_shares")) {
            c.max_shares = m;
        }
        self.apply_rest(c);
    }

    /// Settings the file may leave unset and a flag then supplies.
    fn apply_rest(&self, c: &mut Config) {
        c.size = c.size.or(self.size);
        c.read_only |= self.read_only;
        c.state = c.state.clone().or_else(|| self.state.clone());
        c.reset_reservations |= self.reset_reservations;
        c.socket_group = c.socket_group.clone().or_else(|| self.socket_group.clone());
        c.socket_mode = c.socket_mode.or(self.socket_mode);
        c.socket_world_access |= self.socket_world_access;
        c.control_socket = c
            .control_socket
            .clone()
            .or_else(|| self.control_socket.clone());
        c.admin_group = c.admin_group.clone().or_else(|| self.admin_group.clone());
        c.metrics_listen = c.metrics_listen.or(self.metrics_listen);
        c.direct |= self.direct;
        self.apply_iscsi(c);
    }

    /// `--iscsi-listen` and `--iscsi-initiator` add portals and initiators to `[iscsi]` (and
    /// create it when the file has none).
    fn apply_iscsi(&self, c: &mut Config) {
        if self.iscsi_listen.is_empty() && self.iscsi_initiators.is_empty() {
            return;
        }
        let iscsi = c.iscsi.get_or_insert_with(Default::default);
        for a in &self.iscsi_listen {
            if !iscsi.listen.contains(a) {
                iscsi.listen.push(*a);
            }
        }
        for n in &self.iscsi_initiators {
            if !iscsi.initiators.iter().any(|o| o.eq_ignore_ascii_case(n)) {
                iscsi.initiators.push(n.clone());
            }
        }
    }
}

/// A validation error of a configuration from a file, naming the file, and the line and key
/// where it can tell.
fn locate(e: ConfigError, src: &Source<'_>) -> ConfigError {
    let path = src.path().display();
    match &e {
        ConfigError::Duplicate(n) | ConfigError::BadQueues(n) => {
            ConfigError::File(format!("{}: key `guest.name`: {e}", src.at_guest(n)))
        }
        ConfigError::TooMany { .. } | ConfigError::BadMaxShares => ConfigError::File(format!(
            "{}: key `image.max_shares`: {e}",
            src.at("image.max_shares")
        )),
        ConfigError::WorldAccess(_) => ConfigError::File(format!(
            "{}: key `server.socket_mode`: {e}",
            src.at("server.socket_mode")
        )),
        ConfigError::Iscsi(_) => ConfigError::File(format!("{}: {e}", src.at("iscsi.listen"))),
        ConfigError::NoGuests => {
            ConfigError::File(format!("{path}: no [[guest]] entries and no --guests: {e}"))
        }
        _ => ConfigError::File(format!("{path}: {e}")),
    }
}
