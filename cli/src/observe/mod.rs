//! What the daemon shows of itself: its log (`log`).

pub mod log;
