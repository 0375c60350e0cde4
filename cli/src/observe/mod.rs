//! What the daemon shows of itself: its log (`log`, with `limit` for lines that could repeat
//! without end), histograms of durations (`histogram`).

pub mod histogram;
pub mod limit;
pub mod log;
