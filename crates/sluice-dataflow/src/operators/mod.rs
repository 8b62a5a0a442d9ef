//! The operators, one concept each.
//!
//! Stateless: [`Map`] (filter and projection), [`Union`], [`Unnest`].
//! Stateful, sharing the partitioned-state component ([`partitioned`]):
//! [`GroupBy`], [`Join`], [`IntervalJoin`], [`LookupJoin`], [`TopN`],
//! [`WindowFunction`]. Stateful with their own layout: [`Session`] and
//! [`TemporalJoin`]. Every side byte of every operator's state is in
//! [`layout`]; what a watermark closes is in [`event_time`].

pub mod event_time;
mod group_by;
mod join;
pub mod layout;
mod lookup_join;
mod map;
mod partitioned;
mod session;
mod temporal;
mod top_n;
mod union;
mod unnest;
mod window_function;

pub use event_time::{micros_of, Bound, WATERMARK_COLUMN};
pub use group_by::{invertible_type, GroupBy, Inverted, Merge, Total, WindowClose};
pub use join::{Expiry, IntervalJoin, Join};
pub use lookup_join::LookupJoin;
pub use map::Map;
pub use partitioned::ordered::plain_aggregate;
pub use partitioned::PartitionedInput;
pub use session::{Session, SessionColumn, SessionSpec};
pub use temporal::{TemporalJoin, TemporalSpec};
pub use top_n::TopN;
pub use union::Union;
pub use unnest::Unnest;
pub use window_function::WindowFunction;
