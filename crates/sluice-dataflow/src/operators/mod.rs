//! The operators, one file each.

mod map;
mod recompute;
mod session;
mod state_keys;
mod temporal;
mod union;
mod unnest;

pub use map::Map;
pub use recompute::{
    invertible_type, micros_of, plain_aggregate, Bound, EventTime, Expiry, Inverted, Merge,
    Partitioning, Recompute, RecomputeInput, Total, WindowClose, WATERMARK_COLUMN,
};
pub use session::{Session, SessionColumn, SessionSpec};
pub use temporal::{TemporalJoin, TemporalSpec};
pub use union::Union;
pub use unnest::Unnest;
