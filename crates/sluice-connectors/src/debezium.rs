//! Debezium change events in JSON (`format = 'debezium_json'`) into a
//! table keyed by its primary key: `op` `c` (create) and `r` (snapshot
//! read) upsert `after`; `u` upserts `after`, deleting `before`'s key first
//! when the update moved the row to another key; `d` deletes `before`'s
//! key. A tombstone (the null value Debezium writes after a delete, for
//! compaction) is skipped. The envelope may be bare or wrapped as
//! `{"schema": ..., "payload": {...}}` (the JSON converter with schemas).
//!
//! The envelopes are decoded a poll at a time by arrow-json, as structs of
//! the table's columns (`before`, `after`, and the same under `payload`):
//! no record goes through a generic JSON value.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{and, or};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use sluice_common::{Result, SluiceError};

/// What a decoded event asks for, per row of the envelope batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace the row `after`.
    Upsert,
    /// Delete the key of `before`.
    Delete,
    /// Delete the key of `before`, then upsert `after` (a key change).
    Move,
}

/// The schema arrow-json decodes envelopes with, for rows of `value`.
pub fn envelope_schema(value: &SchemaRef) -> SchemaRef {
    let row = DataType::Struct(value.fields().clone());
    let parts = || {
        vec![
            Field::new("before", row.clone(), true),
            Field::new("after", row.clone(), true),
            Field::new("op", DataType::Utf8, true),
        ]
    };
    let mut fields = parts();
    fields.push(Field::new(
        "payload",
        DataType::Struct(Fields::from(parts())),
        true,
    ));
    Arc::new(Schema::new(fields))
}

fn bad(message: String) -> SluiceError {
    SluiceError::InvalidText { message }
}

/// Decoded envelopes: the ops, and `before`/`after` as batches of the
/// value columns (row `i` of each for envelope `i`).
#[derive(Debug)]
pub struct Events {
    /// One per envelope; `None` for a tombstone-like envelope to skip.
    pub ops: Vec<Option<Op>>,
    /// The old rows (null where absent).
    pub before: RecordBatch,
    /// The new rows (null where absent).
    pub after: RecordBatch,
    /// Envelopes that are not valid events: index and reason.
    pub bad: Vec<(usize, String)>,
}

fn rows(value: &SchemaRef, column: &ArrayRef) -> Result<RecordBatch> {
    let s = column
        .as_struct_opt()
        .ok_or_else(|| SluiceError::internal("a Debezium row is not a struct"))?;
    Ok(RecordBatch::try_new(value.clone(), s.columns().to_vec())?)
}

/// Reads decoded envelopes (a batch of [`envelope_schema`]) into events;
/// `key` are the primary key's indices among the value columns.
pub fn events(batch: &RecordBatch, value: &SchemaRef, key: &[usize]) -> Result<Events> {
    let col = |name: &str| -> Result<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| SluiceError::internal("Debezium envelope column missing"))
    };
    let payload = col("payload")?;
    let payload = payload
        .as_struct_opt()
        .ok_or_else(|| SluiceError::internal("Debezium payload is not a struct"))?;
    // Where the envelope is wrapped, its parts are under payload.
    let wrapped = BooleanArray::from_iter((0..batch.num_rows()).map(|i| Some(payload.is_valid(i))));
    let part = |name: &str| -> Result<ArrayRef> {
        let inner = payload
            .column_by_name(name)
            .ok_or_else(|| SluiceError::internal("Debezium payload column missing"))?;
        Ok(zip(&wrapped, inner, &col(name)?)?)
    };
    let (before, after, op) = (part("before")?, part("after")?, part("op")?);
    let op = op.as_string::<i32>();
    let before_rows = rows(value, &before)?;
    let after_rows = rows(value, &after)?;
    // Whether an update keeps its key: every key column not distinct.
    let mut moved = BooleanArray::from(vec![false; batch.num_rows()]);
    for &k in key {
        let changed = distinct(before_rows.column(k), after_rows.column(k))?;
        moved = or(&moved, &changed)?;
    }
    let has_before =
        BooleanArray::from_iter((0..batch.num_rows()).map(|i| Some(before.is_valid(i))));
    let moved = and(&moved, &has_before)?;
    let mut ops = Vec::with_capacity(batch.num_rows());
    let mut bad_rows = Vec::new();
    for i in 0..batch.num_rows() {
        let (b, a) = (before.is_valid(i), after.is_valid(i));
        let this = match (op.is_valid(i).then(|| op.value(i)), b, a) {
            // {"schema": ..., "payload": null}: a tombstone (validation let
            // through only records with "op" or "payload").
            (None, _, _) if !payload.is_valid(i) => Ok(None),
            (None, _, _) => Err("a Debezium record without \"op\"".to_owned()),
            (Some("c" | "r"), _, true) => Ok(Some(Op::Upsert)),
            (Some("u"), _, true) if moved.value(i) => Ok(Some(Op::Move)),
            (Some("u"), _, true) => Ok(Some(Op::Upsert)),
            (Some("d"), true, _) => Ok(Some(Op::Delete)),
            (Some(o @ ("c" | "r" | "u")), _, false) => Err(format!(
                "a Debezium record with op = '{o}' has no \"after\""
            )),
            (Some("d"), false, _) => Err(
                "a Debezium delete (op = 'd') has no \"before\": set the source table's \
                 REPLICA IDENTITY so that Debezium sends the key"
                    .to_owned(),
            ),
            (Some("t"), _, _) => {
                Err("a Debezium truncate (op = 't') cannot be applied row by row".to_owned())
            }
            (Some(other), _, _) => Err(format!("unknown Debezium op '{other}'")),
        };
        match this {
            Ok(o) => ops.push(o),
            Err(reason) => {
                ops.push(None);
                bad_rows.push((i, reason));
            }
        }
    }
    Ok(Events {
        ops,
        before: before_rows,
        after: after_rows,
        bad: bad_rows,
    })
}

/// Rejects an envelope that is a JSON object but not a Debezium event at
/// all (no `op`, no `payload`), so it is not taken for a tombstone.
pub fn validate_envelope(record: &[u8]) -> Result<()> {
    // Only the keys are read; the values are skipped unparsed.
    let keys: std::collections::BTreeMap<std::borrow::Cow<'_, str>, serde::de::IgnoredAny> =
        serde_json::from_slice(record).map_err(|e| bad(format!("invalid Debezium record: {e}")))?;
    if !keys.contains_key("op") && !keys.contains_key("payload") {
        return Err(bad(
            "a Debezium record needs \"op\" (or a \"payload\" holding it)".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode, Encoding};
    use datafusion::arrow::array::{Int64Array, StringArray};

    #[test]
    fn envelopes_become_events() {
        let value = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        // (envelope, expected op or bad-reason part)
        let cases: Vec<(&str, std::result::Result<Option<Op>, &str>)> = vec![
            (
                r#"{"before": null, "after": {"id": 1, "name": "a"}, "op": "c"}"#,
                Ok(Some(Op::Upsert)),
            ),
            (
                r#"{"after": {"id": 2, "name": "s"}, "op": "r", "source": {"table": "t"}}"#,
                Ok(Some(Op::Upsert)),
            ),
            (
                r#"{"before": {"id": 1}, "after": {"id": 1, "name": "b"}, "op": "u"}"#,
                Ok(Some(Op::Upsert)),
            ),
            (
                r#"{"before": {"id": 1}, "after": {"id": 3, "name": "m"}, "op": "u"}"#,
                Ok(Some(Op::Move)),
            ),
            (
                r#"{"before": {"id": 2}, "after": null, "op": "d"}"#,
                Ok(Some(Op::Delete)),
            ),
            (
                r#"{"schema": {"type": "struct"}, "payload": {"before": null, "after": {"id": 4, "name": "w"}, "op": "c"}}"#,
                Ok(Some(Op::Upsert)),
            ),
            (r#"{"schema": null, "payload": null}"#, Ok(None)),
            (
                r#"{"before": null, "after": null, "op": "c"}"#,
                Err("has no \"after\""),
            ),
            (r#"{"before": null, "op": "d"}"#, Err("REPLICA IDENTITY")),
            (
                r#"{"after": {"id": 1}, "op": "x"}"#,
                Err("unknown Debezium op 'x'"),
            ),
            (r#"{"op": "t"}"#, Err("truncate")),
        ];
        let envelope = envelope_schema(&value);
        let records: Vec<&[u8]> = cases.iter().map(|(r, _)| r.as_bytes()).collect();
        let d = decode(&envelope, &Encoding::Json, &records, &|_, _| Ok(())).expect("decode");
        assert!(d.bad.is_empty(), "{:?}", d.bad);
        let e = events(&d.batch, &value, &[0]).expect("events");
        for (i, (record, want)) in cases.iter().enumerate() {
            match want {
                Ok(op) => assert_eq!(e.ops[i], *op, "{record}"),
                Err(needle) => {
                    let (_, reason) = e.bad.iter().find(|(j, _)| *j == i).expect(record);
                    assert!(reason.contains(needle), "{record}: {reason}");
                }
            }
        }
        let ids = e
            .after
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        assert_eq!(ids.value(5), 4, "the wrapped envelope's after");
        let names = e
            .after
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("names");
        assert_eq!(names.value(3), "m");
        assert!(validate_envelope(br#"{"id": 1}"#).is_err());
        assert!(validate_envelope(br#"{"op": "c"}"#).is_ok());
        assert!(validate_envelope(br#"{"schema": null, "payload": null}"#).is_ok());
        // A wrapped envelope without op is bad, not a tombstone.
        let d = decode(
            &envelope,
            &Encoding::Json,
            &[br#"{"payload": {"after": {"id": 1}}}"#.as_slice()],
            &|_, _| Ok(()),
        )
        .expect("decode");
        let e = events(&d.batch, &value, &[0]).expect("events");
        assert!(e.bad[0].1.contains("without \"op\""), "{:?}", e.bad);
    }
}
