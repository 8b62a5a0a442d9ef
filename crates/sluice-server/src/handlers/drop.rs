//! `DROP STREAM` / `DROP TABLE`: the definition and every row go.

use sluice_common::Result;
use sluice_sql::Drop;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, drop: &Drop) -> Result<Output> {
    engine.catalog().drop_relations(drop).await?;
    Ok(Output::command(&format!(
        "DROP {}",
        drop.kind.keyword().to_uppercase()
    )))
}
