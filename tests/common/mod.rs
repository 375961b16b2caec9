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
pub mod netlab;
pub mod panics;
pub mod process;
pub mod scsi_client;
pub mod vu_frontend;
