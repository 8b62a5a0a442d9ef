//! `Union` (UNION ALL): the changes of every input, as they come. Stateless.

use async_trait::async_trait;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use sluice_common::{ChangeBatch, Result};

use crate::{OpContext, Operator};

/// Passes the changes of all its inputs through.
pub struct Union {
    schema: SchemaRef,
}

impl Union {
    /// A union with output `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Union { schema }
    }
}

#[async_trait]
impl Operator for Union {
    async fn process(
        &self,
        _input: usize,
        changes: ChangeBatch,
        _state: &[u8],
        _ctx: &mut OpContext<'_>,
    ) -> Result<ChangeBatch> {
        let columns = changes
            .batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        changes.with_columns(self.schema.clone(), columns)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn explain(&self) -> String {
        "Union (stateless)".to_owned()
    }
}
