//! `CREATE STREAM` / `CREATE TABLE`.

use sluice_common::Result;
use sluice_sql::CreateRelation;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateRelation) -> Result<Output> {
    engine.catalog().create(create).await?;
    Ok(Output::command(&format!(
        "CREATE {}",
        create.kind.keyword().to_uppercase()
    )))
}
