//! The component the stateful operators share: inputs kept as multisets
//! partitioned by a key, and the node's own plan run over a partition's
//! rows.
//!
//! GROUP BY, joins, top-N and window functions are maintained the same way:
//! each input's rows are kept in state, partitioned by a key (the group
//! key, the join key, the window's PARTITION BY; one partition for a global
//! top-N). A change of an input updates that input's rows of the partitions
//! it touches, and the node's own logical plan (any aggregate, join type or
//! window function DataFusion has) runs over just those partitions' rows
//! ([`PartitionPlan`]). The difference between the new and the old output
//! of those partitions is the change emitted. That is exact under
//! retractions by construction: a deleted maximum is simply not among the
//! rows any more.
//!
//! State ([`PartitionedState`], sides from [`super::layout::partitioned`]):
//! `<side> <key length u32> <key> <row>` -> multiplicity (i64) for each
//! input side and for the output rows, and `<sizes side>` -> how many rows
//! each input side holds (two i64). An input may keep its rows of a key in
//! the order of one column ([`codec`]), to be read by range ([`ordered`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::MemTable;
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_common::{batch_with_rows, ChangeBatch, Result, SluiceError};

use super::layout::partitioned::{INPUT, OUTPUT, SIZES};
use super::layout::{count_of, partition_prefix, side_prefix, split_entry, Region};
use crate::OpContext;

pub(crate) mod codec;
pub(crate) mod ordered;
pub(crate) use codec::{decode_rows, InputCodec};

/// Encoded rows with their multiplicities.
pub(crate) type Rows = Vec<(Vec<u8>, i64)>;

/// The name of the scratch table a partition's rows are planned over.
pub(crate) const SCRATCH: &str = "__sluice_input";

/// One input of a partitioned operator.
pub struct PartitionedInput {
    /// The input's schema as the node's plan sees it (with qualifiers).
    pub df_schema: DFSchemaRef,
    /// The partition key of a row, evaluated on the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
}

/// A row converter for `fields`, or none for no fields.
pub(crate) fn converter(fields: impl Iterator<Item = DataType>) -> Result<Option<RowConverter>> {
    let sort_fields: Vec<SortField> = fields.map(SortField::new).collect();
    if sort_fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(RowConverter::new(sort_fields)?))
}

/// Each row of `batch`, encoded by `converter`.
pub(crate) fn rows_of(converter: &RowConverter, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    if batch.num_columns() == 0 {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    }
    let rows = converter.convert_columns(batch.columns())?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

/// The keys, each once, in order of first appearance.
pub(crate) fn distinct(keys: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    keys.iter()
        .filter(|k| seen.insert(k.as_slice()))
        .cloned()
        .collect()
}

/// `batch` (of `schema`) as an in-memory table whose columns are named
/// `c0`, `c1`, ... so any qualified names can be put back on top.
pub(crate) fn scratch_table(schema: &SchemaRef, batch: RecordBatch) -> Result<MemTable> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect();
    let scratch = Arc::new(Schema::new(fields));
    let rows = batch.num_rows();
    let batch = batch_with_rows(scratch.clone(), batch.columns().to_vec(), rows)?;
    Ok(MemTable::try_new(scratch, vec![vec![batch]])?)
}

/// The inputs' rows, as multisets partitioned by key.
pub(crate) struct PartitionedState {
    /// Each input's codec (its keys and how its rows are encoded).
    pub inputs: Vec<InputCodec>,
    /// Roughly how many rows each input side holds (decides between
    /// reading keys one by one and reading a whole side), kept in state
    /// under [`SIZES`].
    sizes: Mutex<Option<[i64; 2]>>,
}

impl PartitionedState {
    /// The state of `inputs`, in order.
    pub fn try_new(inputs: Vec<PartitionedInput>) -> Result<Self> {
        let mut codecs = Vec::with_capacity(inputs.len());
        for input in inputs {
            let arrow: SchemaRef = Arc::new(input.df_schema.as_arrow().clone());
            let key_types = input
                .keys
                .iter()
                .map(|k| k.data_type(&arrow))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let key_codec = converter(key_types.into_iter())?;
            codecs.push(InputCodec::try_new(input.df_schema, input.keys, key_codec)?);
        }
        Ok(PartitionedState {
            inputs: codecs,
            sizes: Default::default(),
        })
    }

    /// The regions of input sides and of the sizes, for
    /// [`crate::Operator::state_layout`].
    pub fn input_regions(&self, name: &'static str) -> Vec<Region> {
        let mut regions: Vec<Region> = (0..self.inputs.len().min(2))
            .map(|i| Region {
                side: INPUT[i],
                name,
                key: "<key length u32> <key> <row>",
                value: "multiplicity i64",
            })
            .collect();
        regions.push(Region {
            side: SIZES,
            name: "rows per input side",
            key: "",
            value: "two i64",
        });
        regions
    }

    /// The output rows' region.
    pub fn output_region(name: &'static str) -> Region {
        Region {
            side: OUTPUT,
            name,
            key: "<key length u32> <key> <row>",
            value: "multiplicity i64",
        }
    }

    /// The partition key of each row of `batch`, a change of `input`.
    pub fn keys_of(&self, input: usize, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let codec = &self.inputs[input];
        super::layout::encode_keys(codec.key_codec.as_ref(), &codec.keys, batch)
    }

    /// The side byte of input `input`.
    pub fn side(input: usize) -> u8 {
        INPUT.get(input).copied().unwrap_or(OUTPUT)
    }

    /// Roughly how many rows input `side` holds.
    pub fn side_size(&self, side: usize, ctx: &OpContext<'_>, prefix: &[u8]) -> Result<i64> {
        Ok(self
            .with_sizes(ctx, prefix, |sizes| sizes.get(side).copied())?
            .unwrap_or(0))
    }

    /// Notes that `n` rows joined input side `side` (negative: left it).
    /// Other sides (the output) are not counted.
    pub fn count_rows(
        &self,
        side: usize,
        n: i64,
        ctx: &mut OpContext<'_>,
        prefix: &[u8],
    ) -> Result<()> {
        if n == 0 || side >= self.inputs.len().min(2) {
            return Ok(());
        }
        let sizes = self.with_sizes(ctx, prefix, |sizes| {
            sizes[side] += n;
            *sizes
        })?;
        let mut value = sizes[0].to_be_bytes().to_vec();
        value.extend_from_slice(&sizes[1].to_be_bytes());
        ctx.txn.put(side_prefix(prefix, SIZES), value);
        Ok(())
    }

    /// Runs `f` on the sides' sizes, read from state the first time.
    fn with_sizes<R>(
        &self,
        ctx: &OpContext<'_>,
        prefix: &[u8],
        f: impl FnOnce(&mut [i64; 2]) -> R,
    ) -> Result<R> {
        let mut sizes = self
            .sizes
            .lock()
            .map_err(|_| SluiceError::internal("sizes lock poisoned"))?;
        if sizes.is_none() {
            let key = side_prefix(prefix, SIZES);
            let stored = ctx.txn.multi_get(&[key])?.pop().flatten();
            *sizes = Some(match stored {
                Some(b) if b.len() == 16 => [count_of(&b[..8])?, count_of(&b[8..])?],
                _ => [0, 0],
            });
        }
        Ok(f(sizes.get_or_insert([0, 0])))
    }

    /// Adds rows (with their keys and signs) to the multiset of `side`.
    pub fn apply(
        &self,
        ctx: &mut OpContext<'_>,
        prefix: &[u8],
        side: u8,
        keys: &[Vec<u8>],
        rows: Vec<Vec<u8>>,
        signs: impl Fn(usize) -> i8,
    ) -> Result<()> {
        let mut deltas: HashMap<Vec<u8>, i64> = HashMap::new();
        for (i, row) in rows.into_iter().enumerate() {
            let mut k = partition_prefix(prefix, side, &keys[i]);
            k.extend_from_slice(&row);
            *deltas.entry(k).or_default() += i64::from(signs(i));
        }
        self.count_rows(usize::from(side), deltas.values().sum::<i64>(), ctx, prefix)?;
        let ks: Vec<Vec<u8>> = deltas.keys().cloned().collect();
        let current = ctx.txn.multi_get(&ks)?;
        for (k, old) in ks.into_iter().zip(current) {
            let new = old.map(|b| count_of(&b)).transpose()?.unwrap_or(0) + deltas[&k];
            if new == 0 {
                ctx.txn.delete(k);
            } else {
                ctx.txn.put(k, new.to_be_bytes().to_vec());
            }
        }
        Ok(())
    }

    /// The rows of `side` under `key`, with their multiplicities.
    pub fn load(&self, ctx: &OpContext<'_>, prefix: &[u8], side: u8, key: &[u8]) -> Result<Rows> {
        let at = partition_prefix(prefix, side, key);
        ctx.txn
            .scan_prefix(&at)?
            .into_iter()
            .map(|(k, v)| Ok((k[at.len()..].to_vec(), count_of(&v)?)))
            .collect()
    }

    /// The rows of `side` under any of `keys`: one range read per key for
    /// up to `key_by_key` keys (or many keys of a much larger side), one
    /// read of the whole side otherwise.
    pub fn load_many(
        &self,
        ctx: &OpContext<'_>,
        prefix: &[u8],
        side: u8,
        keys: &[Vec<u8>],
        key_by_key: usize,
    ) -> Result<Rows> {
        let size = self.side_size(usize::from(side), ctx, prefix)?;
        if keys.len() <= key_by_key || (keys.len() as i64).saturating_mul(8) < size {
            let mut rows = Vec::new();
            for key in keys {
                rows.extend(self.load(ctx, prefix, side, key)?);
            }
            return Ok(rows);
        }
        let wanted: std::collections::HashSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let at = side_prefix(prefix, side);
        let mut rows = Vec::new();
        for (k, v) in ctx.txn.scan_prefix(&at)? {
            let (key, row) = split_entry(&k[at.len()..])?;
            if wanted.contains(key) {
                rows.push((row.to_vec(), count_of(&v)?));
            }
        }
        Ok(rows)
    }
}

/// A node's logical plan, run over given rows of its inputs.
pub(crate) struct PartitionPlan {
    plan: LogicalPlan,
    /// The output's schema.
    pub schema: SchemaRef,
    /// Encodes output rows.
    pub output_rows: RowConverter,
}

impl PartitionPlan {
    /// Runs `plan` (whose output is its schema) over rows.
    pub fn try_new(plan: LogicalPlan) -> Result<Self> {
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let output_rows = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        Ok(PartitionPlan {
            plan,
            schema,
            output_rows,
        })
    }

    /// No rows of the output.
    pub fn empty(&self) -> ChangeBatch {
        ChangeBatch::empty(self.schema.clone())
    }

    /// Runs the plan over these rows of its inputs (`inputs[i]` of
    /// `codecs[i]`'s schema).
    pub async fn execute(
        &self,
        session: &SessionContext,
        codecs: &[InputCodec],
        inputs: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let mut new_inputs = Vec::with_capacity(inputs.len());
        for (codec, batch) in codecs.iter().zip(inputs) {
            let table = scratch_table(&codec.schema, batch)?;
            let exprs: Vec<Expr> = codec
                .df_schema
                .iter()
                .enumerate()
                .map(|(i, (qualifier, field))| {
                    Expr::Column(Column::new(Some(SCRATCH), format!("c{i}")))
                        .alias_qualified(qualifier.cloned(), field.name())
                })
                .collect();
            let plan =
                LogicalPlanBuilder::scan(SCRATCH, provider_as_source(Arc::new(table)), None)?
                    .project(exprs)?
                    .build()?;
            new_inputs.push(plan);
        }
        let plan = self
            .plan
            .clone()
            .with_new_exprs(self.plan.expressions(), new_inputs)?;
        let batches = session.execute_logical_plan(plan).await?.collect().await?;
        let merged = concat_batches(
            &batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| self.schema.clone()),
            &batches,
        )?;
        Ok(RecordBatch::try_new(
            self.schema.clone(),
            merged.columns().to_vec(),
        )?)
    }

    /// Output rows, encoded, each once.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        Ok(rows_of(&self.output_rows, batch)?
            .into_iter()
            .map(|r| (r, 1))
            .collect())
    }

    /// Encoded output rows as a batch.
    pub fn decode(&self, rows: &[(Vec<u8>, i64)]) -> Result<RecordBatch> {
        decode_rows(&self.output_rows, &self.schema, rows)
    }

    /// The change from `old` to `new` rows (`old` encoded, with
    /// multiplicity), and `new` encoded.
    pub fn diff(
        &self,
        old: &[(Vec<u8>, i64)],
        new: &RecordBatch,
    ) -> Result<(ChangeBatch, Vec<Vec<u8>>)> {
        let new_rows = rows_of(&self.output_rows, new)?;
        let mut counts: HashMap<&[u8], i64> = HashMap::new();
        for (row, n) in old {
            *counts.entry(row.as_slice()).or_default() -= n;
        }
        for row in &new_rows {
            *counts.entry(row.as_slice()).or_default() += 1;
        }
        let mut changed: Vec<(Vec<u8>, i64)> = counts
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .map(|(r, n)| (r.to_vec(), n))
            .collect();
        changed.sort();
        let batch = decode_rows(&self.output_rows, &self.schema, &changed)?;
        let mut signs = Vec::with_capacity(batch.num_rows());
        for (_, n) in &changed {
            signs.extend(std::iter::repeat_n(
                n.signum() as i8,
                n.unsigned_abs() as usize,
            ));
        }
        Ok((ChangeBatch::new(batch, signs), new_rows))
    }
}

/// Adds `changes` to input 0's rows and recomputes the partitions they
/// touch, key by key, from every input's rows, storing each partition's
/// output rows: top-N and window functions, whose output per partition is
/// not a function of the change alone.
pub(crate) async fn recompute_per_key(
    plan: &PartitionPlan,
    parts: &PartitionedState,
    changes: ChangeBatch,
    prefix: &[u8],
    ctx: &mut OpContext<'_>,
) -> Result<ChangeBatch> {
    let keys = parts.keys_of(0, &changes.batch)?;
    let rows = parts.inputs[0].encode(&changes.batch)?;
    parts.apply(ctx, prefix, INPUT[0], &keys, rows, |i| changes.sign(i))?;
    let mut changes_out = Vec::new();
    for key in distinct(&keys) {
        let mut inputs = Vec::with_capacity(parts.inputs.len());
        for (side, codec) in parts.inputs.iter().enumerate() {
            let rows = parts.load(ctx, prefix, PartitionedState::side(side), &key)?;
            inputs.push(codec.decode(&rows)?);
        }
        let old = parts.load(ctx, prefix, OUTPUT, &key)?;
        let new = plan.execute(ctx.datafusion, &parts.inputs, inputs).await?;
        let (change, new_rows) = plan.diff(&old, &new)?;
        ctx.txn
            .delete_prefix(partition_prefix(prefix, OUTPUT, &key))?;
        let keys = vec![key.clone(); new_rows.len()];
        parts.apply(ctx, prefix, OUTPUT, &keys, new_rows, |_| 1)?;
        changes_out.push(change);
    }
    ChangeBatch::concat(plan.schema.clone(), &changes_out)
}
