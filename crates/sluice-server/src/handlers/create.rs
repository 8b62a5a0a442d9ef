//! `CREATE STREAM` / `CREATE TABLE`, and the start of its source when it
//! has a connector.

use std::collections::BTreeMap;

use sluice_common::{Result, SluiceError};
use sluice_sql::CreateRelation;

use crate::engine::{Engine, Output};

pub async fn execute(engine: &Engine, create: &CreateRelation) -> Result<Output> {
    let mut create = create.clone();
    engine.sources().infer_columns(&mut create).await?;
    let create = &create;
    let options: BTreeMap<String, String> =
        sluice_catalog::validate_options(create.kind, &create.name, &create.options)?;
    engine.sources().check(create, &options)?;
    if engine.catalog().create(create).await? == sluice_catalog::Created::New {
        let relation = engine
            .catalog()
            .get(&create.name)?
            .ok_or_else(|| SluiceError::internal("a created relation vanished"))?;
        engine.sources().start(relation)?;
    }
    Ok(Output::command(&format!(
        "CREATE {}",
        create.kind.keyword().to_uppercase()
    )))
}
