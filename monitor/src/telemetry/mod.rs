//! The monitor about itself: its counters ([`metrics`]), what lets a gap in the monitoring
//! be seen ([`liveness`]), and its logs ([`logging`]).
//!
//! It uses only [`crate::event`]; the outputs above it export what it counts.

pub mod liveness;
pub mod logging;
pub mod metrics;
