//! What the daemon shows of itself: its log (`log`, with `limit` for lines that could repeat
//! without end), histograms of durations (`histogram`), and its counters as Prometheus metrics:
//! the text format (`exposition`), the snapshot rendered in it (`metrics`) and the `/metrics`
//! endpoint (`http`).

pub mod exposition;
pub mod histogram;
pub mod http;
pub mod limit;
pub mod log;
pub mod metrics;
