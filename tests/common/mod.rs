//! Test layout. Unit tests sit beside their module as `<module>/tests.rs` (`#[cfg(test)] mod
//! tests;`), testing private items. Integration tests are the files in `tests/`, one behaviour
//! area per file (`scsi_*`, `blk_*`, `cluster_*`, `guest_*` for QEMU guests, `e2e_*` for whole
//! scenarios on the daemon binary); tests that need the test hooks (the probe, failpoints, the
//! write delay) or cluster mode name the feature in `required-features` in Cargo.toml. What
//! several tests share lives here, once: the daemon in-process (`daemon`) or as a process
//! (`process`, `etcd::ClusterDaemon`, `iscsi_portal` for one with an iSCSI portal), the clients
//! (`scsi_client`, `vu_frontend`, `blkio_client`, `iscsi_client`), Debian's tgt as the yardstick
//! target (`tgt`), guests (`guest`, `cluster_vm`), their QMP (`qmp`) and live migration
//! (`migration`), etcd, the guests' owner records in it and the network lab (`etcd`, `owners`,
//! `netlab`), reading the image (`image`) and waiting for a log line (`logs`). A setup that two
//! tests repeat becomes a helper here instead of a copy.
#![allow(dead_code)]
pub mod blkio_client;
pub mod cluster;
pub mod cluster_vm;
pub mod ctl;
pub mod daemon;
pub mod deadline;
pub mod etcd;
#[cfg(feature = "test-hooks")]
pub mod fencing;
pub mod flows;
pub mod guest;
pub mod http;
pub mod image;
pub mod iscsi_client;
pub mod iscsi_portal;
pub mod logs;
pub mod migration;
pub mod netlab;
pub mod owners;
pub mod panics;
pub mod process;
pub mod prometheus;
pub mod qmp;
pub mod scsi_client;
pub mod tgt;
pub mod vu_frontend;
