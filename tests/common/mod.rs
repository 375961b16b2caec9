#![allow(dead_code)]
pub mod blkio_client;
pub mod cluster;
pub mod daemon;
pub mod guest;
pub mod vu_frontend;
