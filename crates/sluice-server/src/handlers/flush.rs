//! `FLUSH`: returns once everything written before it is reflected in every
//! view (a checkpoint that covers it has committed).

use sluice_common::Result;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine) -> Result<Output> {
    engine.dataflow().flush().await?;
    Ok(Output::command("FLUSH"))
}
