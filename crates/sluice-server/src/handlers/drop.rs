//! `DROP STREAM|TABLE|MATERIALIZED VIEW [CASCADE]`: the definition, every
//! row and all operator state go; views that depend on it are refused, or
//! dropped too with CASCADE.

use sluice_common::Result;
use sluice_sql::Drop;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, drop: &Drop) -> Result<Output> {
    for dropped in engine.dataflow().drop_relations(drop).await? {
        engine.sources().stop(&dropped).await;
    }
    Ok(Output::command(&format!(
        "DROP {}",
        drop.kind.keyword().to_uppercase()
    )))
}
