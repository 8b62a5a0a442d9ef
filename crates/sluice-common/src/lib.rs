//! Types shared by every Sluice crate: the error type with its SQLSTATE
//! mapping, and the server configuration. Depends on no Sluice crate and on
//! nothing that touches the network or the disk.

pub mod config;
pub mod error;

pub use config::{AuthMethod, Config};
pub use error::{ObjectKind, Result, SluiceError};
