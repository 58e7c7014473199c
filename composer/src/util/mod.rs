//! Small helpers every step uses: atomic files, progress bars, time formatting.

pub mod fsutil;
pub mod leftovers;
pub mod progress;
pub mod timefmt;
pub mod timings;
