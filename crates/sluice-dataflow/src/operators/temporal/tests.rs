//! Unit tests of [`TemporalJoin`](super::TemporalJoin).
use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::physical_plan::expressions::col;
use datafusion::prelude::SessionContext;
use sluice_state::{MemoryBackend, StateTxn};

use super::*;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

fn batch(schema: &SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.clone(), columns).expect("batch")
}

fn ints(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

fn times(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v))
}

#[test]
fn meta_round_trips() {
    let meta = Meta {
        stream_watermark: Some(-1),
        table_watermark: None,
        freed: Some(7),
        latest: Some(i64::MAX),
        seq: 3,
    };
    assert_eq!(Meta::decode(&meta.encode()).expect("meta"), meta);
    assert_eq!(meta.watermark(), None, "no table watermark yet");
}

#[tokio::test]
async fn events_meet_the_version_of_their_time_and_old_versions_go() {
    let stream = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, true),
        Field::new("ts", ts(), true),
    ]));
    let table = Arc::new(Schema::new(vec![
        Field::new("tk", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("at", ts(), true),
    ]));
    let mut fields: Vec<Field> = stream.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(table.fields().iter().map(|f| f.as_ref().clone()));
    let schema = Arc::new(Schema::new(fields));
    let one = Schema::new(vec![Field::new("at", ts(), true)]);
    let join = TemporalJoin::try_new(TemporalSpec {
        schema: schema.clone(),
        left: false,
        stream_schema: stream.clone(),
        table_schema: table.clone(),
        stream_keys: vec![col("k", &stream).expect("k")],
        table_keys: vec![col("tk", &table).expect("tk")],
        stream_time: 1,
        table_time: 2,
        table_watermark: col("at", &one).expect("at"),
        filter: None,
        label: "TemporalJoin".into(),
    })
    .expect("join");
    let session = SessionContext::new();
    let mut txn = StateTxn::new(Arc::new(MemoryBackend::new()));
    let mut late = Vec::new();
    let mut ctx = OpContext {
        txn: &mut txn,
        datafusion: &session,
        late: &mut late,
    };
    let state = b"op".to_vec();
    let v_of = |out: &ChangeBatch| -> Vec<i64> {
        let v = out
            .batch
            .column(3)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("v");
        v.values().to_vec()
    };

    // Key 1 has versions at 100 (v 10) and 200 (v 20): the table's
    // watermark is 200.
    let rows = batch(
        &table,
        vec![
            ints(vec![1, 1, 2]),
            ints(vec![10, 20, 30]),
            times(vec![100, 200, 100]),
        ],
    );
    let out = join
        .process(1, ChangeBatch::inserts(rows), &state, &mut ctx)
        .await
        .expect("table");
    assert!(out.is_empty());

    // 150 meets the version of 100; 250 waits; key 2 at 50 meets none.
    let events = batch(
        &stream,
        vec![ints(vec![1, 1, 2]), times(vec![150, 250, 50])],
    );
    let out = join
        .process(0, ChangeBatch::inserts(events), &state, &mut ctx)
        .await
        .expect("stream");
    assert_eq!(v_of(&out), vec![10]);
    assert_eq!(join.watermark_hold(), Some(250));

    // Watermarks 240 (stream) and 200 (table): key 1's version of 100
    // can meet no event to come.
    let freed = join
        .on_watermark(&[Some(240), Some(200)], &state, &mut ctx)
        .await
        .expect("wm");
    assert!(freed.is_none());
    let left: Vec<i64> = join
        .versions(
            &state,
            &ctx,
            &join
                .keys_of(
                    &join.spec.stream_keys,
                    &batch(&stream, vec![ints(vec![1]), times(vec![0])]),
                )
                .expect("key")[0],
        )
        .expect("versions")
        .iter()
        .map(|v| v.time)
        .collect();
    assert_eq!(left, vec![200]);

    // A version at 300 lets the event at 250 out, with the version of 200.
    let rows = batch(
        &table,
        vec![ints(vec![1]), ints(vec![40]), times(vec![300])],
    );
    let out = join
        .process(1, ChangeBatch::inserts(rows), &state, &mut ctx)
        .await
        .expect("table");
    assert_eq!(v_of(&out), vec![20]);
    assert_eq!(join.watermark_hold(), None);

    // 210 is behind the watermark (min(240, 300)): late.
    let events = batch(&stream, vec![ints(vec![1]), times(vec![210])]);
    let out = join
        .process(0, ChangeBatch::inserts(events), &state, &mut ctx)
        .await
        .expect("stream");
    assert!(out.is_empty());
    assert_eq!(ctx.late.len(), 1);
    assert_eq!(ctx.late[0].event_time, vec![Some(210)]);
    assert_eq!(ctx.late[0].watermark, Some(240));
}
