//! Types shared by every Sluice crate: the error type with its SQLSTATE
//! mapping, the server configuration, and the change batch. Depends on no Sluice crate and on
//! nothing that touches the network or the disk.

pub mod change;
pub mod config;
pub mod error;
pub mod panic;

pub use change::{batch_with_rows, ChangeBatch};
pub use config::{AuthMethod, Config};
pub use error::{ObjectKind, Result, SluiceError};
pub use panic::catch_panic;
