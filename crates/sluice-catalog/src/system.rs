//! System tables: read-only tables whose rows are computed when they are
//! read (`sluice_sources`, `sluice_operators`, ...), registered with
//! [`crate::SluiceSchema::register_system_table`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Computes the columns of a system table when it is read.
pub type SystemRows = Box<dyn Fn() -> DfResult<Vec<ArrayRef>> + Send + Sync>;

/// A read-only table computed when it is read.
pub struct SystemTable {
    schema: SchemaRef,
    rows: SystemRows,
}

impl SystemTable {
    /// A table of `schema` whose columns `rows` computes.
    pub fn new(schema: SchemaRef, rows: SystemRows) -> Self {
        SystemTable { schema, rows }
    }
}

impl std::fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = RecordBatch::try_new(self.schema.clone(), (self.rows)()?)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
