//! How operators lay out their state, in one place.
//!
//! Every operator's state lives under its key prefix (given to it by the
//! planner, `<view id> <operator number>`), split into *regions* by a side
//! byte: `<prefix> <side u8> ...`. An operator declares its regions
//! ([`Region`], [`crate::Operator::state_layout`]), so the runtime and the
//! tests can tell what each key is without knowing the operator. The side
//! bytes of every operator are the constants below; nothing else assigns
//! one.
//!
//! Inside a region, keys are usually `<side> <key length u32> <key> <rest>`
//! ([`partition_prefix`]): a partition's entries are one range of keys.
//! Keys and rows are `arrow-row` encoded; times are stored so that byte
//! order is time order ([`ordered_time`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::row::RowConverter;
use datafusion::physical_plan::PhysicalExpr;
use sluice_common::{Result, SluiceError};

/// One region of an operator's state: entries under `<prefix> <side>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The side byte after the operator's prefix.
    pub side: u8,
    /// What the region holds.
    pub name: &'static str,
    /// The rest of its keys, after the side byte.
    pub key: &'static str,
    /// Its values.
    pub value: &'static str,
}

/// The side bytes of the operators that keep their inputs partitioned by a
/// key ([`super::partitioned`]: GROUP BY, joins, top-N, window functions).
pub(crate) mod partitioned {
    /// An input's rows (input 0 on side 0, input 1 on side 1).
    pub const INPUT: [u8; 2] = [0, 1];
    /// The output rows an operator produced, per partition.
    pub const OUTPUT: u8 = 2;
    /// The event-time slots: the watermark and each slot's bound at the
    /// last close (windowed GROUP BY, interval joins).
    pub const SLOTS: u8 = 3;
    /// A GROUP BY's running totals per group. The same byte as [`SLOTS`]:
    /// running totals are kept only by a GROUP BY that no watermark
    /// closes, which has no slots (`GroupBy::with_totals`).
    pub const TOTALS: u8 = 3;
    /// A merged GROUP BY's output row per group.
    pub const MERGED: u8 = 4;
    /// How many rows each input side holds.
    pub const SIZES: u8 = 5;
}

/// The side bytes of [`super::TemporalJoin`].
pub(crate) mod temporal {
    /// The table's versions per key.
    pub const VERSIONS: u8 = 0;
    /// The events waiting for the table's watermark.
    pub const WAITING: u8 = 1;
    /// Keys with versions to free.
    pub const DIRTY: u8 = 2;
    /// Watermarks, latest version time, next sequence number.
    pub const META: u8 = 3;
}

/// The side bytes of [`super::Session`].
pub(crate) mod session {
    /// The rows of open sessions, in time order per partition.
    pub const ROWS: u8 = 0;
    /// The watermark rows were last freed at.
    pub const META: u8 = 3;
}

/// Each row's key (`keys` evaluated on `batch`), `arrow-row` encoded; all
/// empty when there is no key (`codec` is `None`).
pub(crate) fn encode_keys(
    codec: Option<&RowConverter>,
    keys: &[Arc<dyn PhysicalExpr>],
    batch: &RecordBatch,
) -> Result<Vec<Vec<u8>>> {
    let Some(codec) = codec else {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    };
    let columns = keys
        .iter()
        .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
        .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
    let rows = codec.convert_columns(&columns)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

/// `<state> <side>`: everything an operator keeps on one side.
pub(crate) fn side_prefix(state: &[u8], side: u8) -> Vec<u8> {
    let mut p = state.to_vec();
    p.push(side);
    p
}

/// `<state> <side> <key length u32> <key>`: one key's entries on a side.
pub(crate) fn partition_prefix(state: &[u8], side: u8, key: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(state.len() + 5 + key.len());
    p.extend_from_slice(state);
    p.push(side);
    p.extend_from_slice(&(key.len() as u32).to_be_bytes());
    p.extend_from_slice(key);
    p
}

/// `<key length u32> <key> <rest>` (an entry after its side) as key and
/// rest.
pub(crate) fn split_entry(entry: &[u8]) -> Result<(&[u8], &[u8])> {
    let corrupt = || SluiceError::Storage("corrupt operator state key".into());
    let (len, rest) = entry.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt());
    }
    Ok(rest.split_at(len))
}

/// A stored multiplicity (or any i64).
pub(crate) fn count_of(bytes: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(bytes.try_into().map_err(|_| {
        SluiceError::Storage("corrupt operator state multiplicity".into())
    })?))
}

/// A time (microseconds) as bytes whose order is the order of times.
pub(crate) fn ordered_time(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time of [`ordered_time`] bytes (the first 8 of `bytes`).
pub(crate) fn time_of(bytes: &[u8]) -> Result<i64> {
    let b: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| SluiceError::Storage("corrupt operator state time".into()))?;
    Ok((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_order_as_bytes() {
        assert!(ordered_time(-5) < ordered_time(3));
        assert!(ordered_time(i64::MIN) < ordered_time(0));
        assert_eq!(time_of(&ordered_time(-42)).expect("time"), -42);
        let p = partition_prefix(b"s", 1, b"key");
        assert_eq!(
            split_entry(&p[2..]).expect("entry"),
            (&b"key"[..], &b""[..])
        );
    }
}
