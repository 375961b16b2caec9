//! Runs a daemon in-process on a fresh image in a temporary directory. With the `test-hooks`
//! feature it can serve the image through the test probe ([`TestDaemon::start_probed`]).

use std::path::{Path, PathBuf};

#[cfg(feature = "test-hooks")]
use std::sync::Arc;

use sharedisk::config::Config;
use sharedisk::daemon::server::Server;
#[cfg(feature = "test-hooks")]
use sharedisk::testhooks::probe::{Probe, Recorder};

/// The probe's recorder, when the image is served through one: never without the feature.
#[cfg(feature = "test-hooks")]
type ProbeSlot = Option<Arc<Recorder>>;
#[cfg(not(feature = "test-hooks"))]
type ProbeSlot = Option<std::convert::Infallible>;

pub struct TestDaemon {
    pub server: Option<Server>,
    pub config: Config,
    pub dir: tempfile::TempDir,
    /// What the image saw, when started with [`TestDaemon::start_probed`].
    pub probe: ProbeSlot,
}

pub const IMAGE_SIZE: u64 = 64 << 20; // 131072 sectors

pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .is_test(true)
        .try_init();
}

impl TestDaemon {
    pub fn start(guests: &[&str]) -> Self {
        Self::start_with(guests, |_| {})
    }

    pub fn start_with(guests: &[&str], tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_inner(guests, tweak, None)
    }

    /// Serves the image through a [`Probe`]: `d.probe()` records (and can slow) every call.
    #[cfg(feature = "test-hooks")]
    pub fn start_probed(guests: &[&str], tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_inner(guests, tweak, Some(Recorder::new()))
    }

    fn start_inner(guests: &[&str], tweak: impl FnOnce(&mut Config), probe: ProbeSlot) -> Self {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("disk.img"), dir.path().join("sock"), guests);
        config.size = Some(IMAGE_SIZE);
        tweak(&mut config);
        let server = Self::serve(config.clone(), &probe).expect("daemon starts");
        TestDaemon {
            server: Some(server),
            config,
            dir,
            probe,
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    fn serve(
        config: Config,
        _probe: &ProbeSlot,
    ) -> Result<Server, sharedisk::daemon::server::ServerError> {
        Server::start(config)
    }

    #[cfg(feature = "test-hooks")]
    fn serve(
        config: Config,
        probe: &ProbeSlot,
    ) -> Result<Server, sharedisk::daemon::server::ServerError> {
        match probe {
            None => Server::start(config),
            Some(rec) => {
                let rec = rec.clone();
                Server::start_wrapped(config, move |image| Box::new(Probe::new(image, rec)))
            }
        }
    }

    /// The probe's recorder; panics unless started with [`TestDaemon::start_probed`].
    #[cfg(feature = "test-hooks")]
    pub fn probe(&self) -> &Recorder {
        self.probe.as_ref().expect("started with start_probed")
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn blk(&self, guest: &str) -> PathBuf {
        self.config.blk_socket(guest)
    }

    pub fn scsi(&self, guest: &str) -> PathBuf {
        self.config.scsi_socket(guest)
    }

    pub fn image(&self) -> &Path {
        &self.config.image
    }

    /// Stops the daemon; the image and state file stay.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }

    /// Starts the daemon again on the same image, sockets and state.
    pub fn restart(&mut self) {
        self.stop();
        let mut config = self.config.clone();
        config.size = None;
        self.server = Some(Self::serve(config, &self.probe).expect("daemon restarts"));
    }
}
