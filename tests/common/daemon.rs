//! Runs a daemon in-process on a fresh image in a temporary directory.

use std::path::{Path, PathBuf};

use sharedisk::config::Config;
use sharedisk::server::Server;

pub struct TestDaemon {
    pub server: Option<Server>,
    pub config: Config,
    pub dir: tempfile::TempDir,
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
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("disk.img"), dir.path().join("sock"), guests);
        config.size = Some(IMAGE_SIZE);
        tweak(&mut config);
        let server = Server::start(config.clone()).expect("daemon starts");
        TestDaemon {
            server: Some(server),
            config,
            dir,
        }
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
        self.server = Some(Server::start(config).expect("daemon restarts"));
    }
}
