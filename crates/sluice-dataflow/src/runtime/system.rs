//! The dataflow's system tables:
//!
//! - `sluice_operators`: one row per stateful operator of every running
//!   view, with the state it holds (keys and bytes, as of the last
//!   checkpoint) and the late rows it dropped since the server started.
//! - `sluice_late_events`: the newest late rows (`late_events_retention`).
//! - `sluice_memory`: the process's resident memory and what the state
//!   store holds of it.

use std::sync::Arc;

use super::Dataflow;
use crate::Node;
use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::TableProvider;
use sluice_catalog::{Relation, SystemTable};

/// One stateful operator of a running view.
#[derive(Debug, Clone)]
pub(crate) struct OperatorInfo {
    pub view: u64,
    pub view_name: String,
    /// Its position in the view's tree (pre-order, as `EXPLAIN` lists it).
    pub index: usize,
    pub label: String,
    pub state: Vec<u8>,
}

/// The stateful operators of `relation`'s tree.
pub(crate) fn operators_of(relation: &Relation, root: &Node) -> Vec<OperatorInfo> {
    let mut out = Vec::new();
    let mut index = 0;
    walk(relation, root, &mut index, &mut out);
    out
}

fn walk(relation: &Relation, node: &Node, index: &mut usize, out: &mut Vec<OperatorInfo>) {
    let Node::Op { op, inputs, prefix } = node else {
        return;
    };
    if !op.stateless() {
        out.push(OperatorInfo {
            view: relation.entry().id,
            view_name: relation.entry().name.clone(),
            index: *index,
            label: op.explain(),
            state: prefix.clone(),
        });
    }
    *index += 1;
    for input in inputs {
        walk(relation, input, index, out);
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn timestamps(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values))
}

impl Dataflow {
    /// `sluice_operators (view, operator, label, state_keys, state_bytes,
    /// late_rows)`.
    pub fn operators_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view", DataType::Utf8, false),
            Field::new("operator", DataType::Int64, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("state_keys", DataType::Int64, false),
            Field::new("state_bytes", DataType::Int64, false),
            Field::new("late_rows", DataType::Int64, false),
        ]));
        let dataflow = Arc::downgrade(self);
        Arc::new(SystemTable::new(
            schema,
            Box::new(move || {
                let mut operators = match dataflow.upgrade() {
                    Some(d) => d
                        .registry
                        .read()
                        .map(|r| r.operators.clone())
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                operators.sort_by_key(|o| (o.view_name.clone(), o.index));
                let mut keys = Vec::with_capacity(operators.len());
                let mut bytes = Vec::with_capacity(operators.len());
                let mut late = Vec::with_capacity(operators.len());
                if let Some(d) = dataflow.upgrade() {
                    for o in &operators {
                        let entries =
                            d.catalog.store().scan_prefix(&o.state).map_err(|e| {
                                datafusion::error::DataFusionError::External(e.into())
                            })?;
                        keys.push(entries.len() as i64);
                        bytes.push(
                            entries
                                .iter()
                                .map(|(k, v)| (k.len() + v.len()) as i64)
                                .sum::<i64>(),
                        );
                        late.push(i64_of(d.late.count(&o.state)));
                    }
                }
                Ok(vec![
                    Arc::new(StringArray::from_iter_values(
                        operators.iter().map(|o| o.view_name.clone()),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        operators.iter().map(|o| o.index as i64),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        operators.iter().map(|o| o.label.clone()),
                    )),
                    Arc::new(Int64Array::from(keys)),
                    Arc::new(Int64Array::from(bytes)),
                    Arc::new(Int64Array::from(late)),
                ])
            }),
        ))
    }

    /// `sluice_memory (component, bytes)`: `process_rss` (Linux), what the
    /// operators' state caches hold (estimated, as of their last
    /// checkpoint), then the state store's parts (RocksDB memtables, block
    /// cache and its pinned part, table readers), read when the table is.
    pub fn memory_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("component", DataType::Utf8, false),
            Field::new("bytes", DataType::Int64, false),
        ]));
        let dataflow = Arc::downgrade(self);
        Arc::new(SystemTable::new(
            schema,
            Box::new(move || {
                let mut parts: Vec<(&str, u64)> = Vec::new();
                if let Some(rss) = process_rss() {
                    parts.push(("process_rss", rss));
                }
                if let Some(d) = dataflow.upgrade() {
                    let cached = d.cached.load(std::sync::atomic::Ordering::Relaxed);
                    parts.push(("operator_caches", cached as u64));
                    parts.extend(d.catalog.store().memory());
                }
                Ok(vec![
                    Arc::new(StringArray::from_iter_values(parts.iter().map(|p| p.0))),
                    Arc::new(Int64Array::from_iter_values(
                        parts.iter().map(|p| i64_of(p.1)),
                    )),
                ])
            }),
        ))
    }

    /// `sluice_late_events (source, view, row, event_time, watermark,
    /// arrived)`.
    pub fn late_events_table(self: &Arc<Self>) -> Arc<dyn TableProvider> {
        let time = DataType::Timestamp(TimeUnit::Microsecond, None);
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("view", DataType::Utf8, false),
            Field::new("row", DataType::Utf8, false),
            Field::new("event_time", time.clone(), true),
            Field::new("watermark", time.clone(), true),
            Field::new("arrived", time, false),
        ]));
        let late = self.late.clone();
        Arc::new(SystemTable::new(
            schema,
            Box::new(move || {
                let events = late.events();
                Ok(vec![
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.source.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.view.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        events.iter().map(|e| e.row.clone()),
                    )),
                    timestamps(events.iter().map(|e| e.event_time)),
                    timestamps(events.iter().map(|e| e.watermark)),
                    timestamps(events.iter().map(|e| Some(e.arrived))),
                ])
            }),
        ))
    }
}

/// The resident set size of this process, from `/proc/self/status`.
fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_of(&status)
}

/// `VmRSS:   1234 kB` → bytes.
fn rss_of(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::rss_of;

    #[test]
    fn rss_from_proc_status() {
        let cases = [
            (
                "Name:\tsluice\nVmRSS:\t  136120 kB\nThreads: 9\n",
                Some(136_120 * 1024),
            ),
            ("VmRSS: 0 kB", Some(0)),
            ("Name: sluice\n", None),
            ("VmRSS: lots kB\n", None),
        ];
        for (status, want) in cases {
            assert_eq!(rss_of(status), want, "{status:?}");
        }
    }
}
