//! Late rows: rows an operator dropped because the watermark had already
//! closed the window, session or join state they belong to. They are not
//! lost: each is kept (up to a retention) for the system table
//! `sluice_late_events`, and counted per operator.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::LineDelimitedWriter;

/// Rows one operator dropped as late while processing one change.
#[derive(Debug)]
pub struct LateRows {
    /// The rows, as the operator received them.
    pub rows: RecordBatch,
    /// Each row's event time (microseconds), where the operator sees it.
    pub event_time: Vec<Option<i64>>,
    /// The watermark the rows were judged against (microseconds).
    pub watermark: Option<i64>,
}

/// One late row, as `sluice_late_events` shows it.
#[derive(Debug, Clone)]
pub struct LateEvent {
    /// The stream(s) the row came from.
    pub source: String,
    /// The view whose operator dropped it.
    pub view: String,
    /// The row as a JSON object.
    pub row: String,
    /// Its event time (microseconds).
    pub event_time: Option<i64>,
    /// The watermark when it arrived (microseconds).
    pub watermark: Option<i64>,
    /// When it arrived (microseconds since the epoch, wall clock).
    pub arrived: i64,
}

/// The late rows of every view: the newest `retention` kept, all counted.
#[derive(Debug)]
pub struct LateEvents {
    retention: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    kept: VecDeque<LateEvent>,
    /// Late rows per operator (by state prefix) since the server started.
    counts: HashMap<Vec<u8>, u64>,
}

impl LateEvents {
    /// Keeps the newest `retention` late rows.
    pub fn new(retention: usize) -> Self {
        LateEvents {
            retention,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records rows operator `operator` (its state prefix) of view `view`
    /// dropped; they came from `source`.
    pub fn record(&self, operator: &[u8], view: &str, source: &str, late: LateRows) {
        let arrived = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let rows = json_rows(&late.rows);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner.counts.entry(operator.to_vec()).or_default() += late.rows.num_rows() as u64;
        tracing::debug!(
            view,
            source,
            rows = late.rows.num_rows(),
            watermark = ?late.watermark,
            "late rows dropped"
        );
        if self.retention == 0 {
            return;
        }
        for (i, row) in rows.into_iter().enumerate() {
            if inner.kept.len() == self.retention {
                inner.kept.pop_front();
            }
            inner.kept.push_back(LateEvent {
                source: source.to_owned(),
                view: view.to_owned(),
                row,
                event_time: late.event_time.get(i).copied().flatten(),
                watermark: late.watermark,
                arrived,
            });
        }
    }

    /// The kept late rows, oldest first.
    pub fn events(&self) -> Vec<LateEvent> {
        self.inner
            .lock()
            .map(|i| i.kept.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many rows the operator with state prefix `operator` dropped.
    pub fn count(&self, operator: &[u8]) -> u64 {
        self.inner
            .lock()
            .map(|i| i.counts.get(operator).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Each row of `batch` as a JSON object (nulls omitted).
fn json_rows(batch: &RecordBatch) -> Vec<String> {
    let mut out = Vec::new();
    let mut writer = LineDelimitedWriter::new(&mut out);
    if writer.write(batch).and_then(|_| writer.finish()).is_err() {
        return vec![String::new(); batch.num_rows()];
    }
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn keeps_the_newest_rows_and_counts_all() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |vs: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vs))])
                .expect("batch")
        };
        let late = LateEvents::new(2);
        for vs in [vec![1, 2], vec![3]] {
            let n = vs.len();
            late.record(
                b"op",
                "v",
                "s",
                LateRows {
                    rows: batch(vs),
                    event_time: vec![Some(5); n],
                    watermark: Some(9),
                },
            );
        }
        let kept: Vec<String> = late.events().into_iter().map(|e| e.row).collect();
        assert_eq!(kept, vec![r#"{"v":2}"#, r#"{"v":3}"#]);
        assert_eq!(late.count(b"op"), 3);
        assert_eq!(late.count(b"other"), 0);
    }
}
