//! The operators, one file each.

mod map;
mod recompute;
mod union;

pub use map::Map;
pub use recompute::{Merge, Partitioning, Recompute, RecomputeInput};
pub use union::Union;
