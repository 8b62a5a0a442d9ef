//! `FLUSH`: returns once everything inserted before it is reflected in every
//! view. INSERTs are durable and visible when they return, and there are no
//! views to catch up yet, so there is nothing to wait for.

use sluice_common::Result;

use crate::engine::{Engine, Output};

pub async fn execute(_engine: &Engine) -> Result<Output> {
    Ok(Output::command("FLUSH"))
}
