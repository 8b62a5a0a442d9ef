//! `DROP STREAM|TABLE|MATERIALIZED VIEW [CASCADE]`: the definition, every
//! row and all operator state go; views that depend on it are refused, or
//! dropped too with CASCADE.

use sluice_common::Result;
use sluice_sql::Drop;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, drop: &Drop) -> Result<Output> {
    let dropped = engine.catalog().drop_relations(drop).await?;
    let ids: Vec<u64> = dropped.iter().map(|r| r.entry().id).collect();
    engine.dataflow().forget(&ids)?;
    Ok(Output::command(&format!(
        "DROP {}",
        drop.kind.keyword().to_uppercase()
    )))
}
