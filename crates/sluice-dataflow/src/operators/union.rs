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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::testkit::Harness;

    #[tokio::test]
    async fn changes_of_every_input_pass_cast_to_the_output() {
        let narrow = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, true)]));
        let wide = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let mut h = Harness::new(Box::new(Union::new(wide.clone())), vec![narrow, wide]);
        assert_eq!(h.push(0, "+ 1\n- 2").await, ["+ 1", "- 2"]);
        assert_eq!(h.push(1, "- 3").await, ["- 3"]);
        assert_eq!(h.state(), [], "no state");
    }
}
