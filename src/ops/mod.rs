//! What operators see and do: per-initiator statistics, the Prometheus metrics and their HTTP
//! endpoint, and the control socket with its client, `sharedisk ctl`.

pub mod control;
pub mod metrics;
pub mod metrics_http;
pub mod stats;
