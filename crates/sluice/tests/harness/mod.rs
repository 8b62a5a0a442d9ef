//! Support for the behaviour tests: a Sluice server in this process, a
//! sqllogictest database over tokio-postgres, and the crash test.

pub mod crash;
pub mod differential;
pub mod drivers;
pub mod files;
pub mod fuzz;
pub mod kafka;
pub mod limits;
pub mod nexmark;
pub mod protobuf;
pub mod registry;
pub mod sasl;
pub mod server;
pub mod slt;
pub mod values;
