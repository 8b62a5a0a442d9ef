//! Unit tests of [`GroupBy`], one per strategy, written as changes in and
//! out.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::*;
use crate::operators::event_time::{Bound, WATERMARK_COLUMN};
use crate::operators::layout::partitioned::{INPUT, MERGED, OUTPUT, SIZES, SLOTS, TOTALS};
use crate::testkit::{arrow, node, physical, plan, Harness};

const I: DataType = DataType::Int64;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

async fn aggregate(sql: &str, columns: &[(&str, DataType)]) -> LogicalPlan {
    let plan = plan(sql, &[("t", columns)]).await;
    node(&plan, |p| matches!(p, LogicalPlan::Aggregate(_)))
}

/// The GroupBy of `aggregate` over its input, keyed by its group columns.
fn group_by(aggregate: &LogicalPlan) -> GroupBy {
    let LogicalPlan::Aggregate(a) = aggregate else {
        panic!("not an aggregate")
    };
    let input = PartitionedInput {
        df_schema: a.input.schema().clone(),
        keys: physical(&a.group_expr, a.input.schema()),
    };
    GroupBy::try_new(aggregate.clone(), input, "GroupBy".into()).expect("group by")
}

fn input_of(aggregate: &LogicalPlan) -> Vec<SchemaRef> {
    vec![arrow(aggregate.inputs()[0].schema())]
}

#[tokio::test]
async fn rows_recompute_a_group_under_retractions() {
    let plan = aggregate(
        "SELECT k, max(v), min(v) FROM t GROUP BY k",
        &[("k", I), ("v", I)],
    )
    .await;
    let op = group_by(&plan);
    assert!(op
        .explain()
        .contains("state: input rows and output row per group"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(
        h.push(0, "+ 1 10\n+ 1 20\n+ 2 5").await,
        ["+ 1 20 10", "+ 2 5 5"]
    );
    assert_eq!(h.push(0, "- 1 20").await, ["+ 1 10 10", "- 1 20 10"]);
    assert_eq!(h.push(0, "- 2 5").await, ["- 2 5 5"]);
    // Group 1: one input row, one output row, and the sizes.
    assert_eq!(h.state(), [(INPUT[0], 1), (OUTPUT, 1), (SIZES, 1)]);
    h.restart(Box::new(group_by(&plan)));
    assert_eq!(
        h.push(0, "+ 1 30\n+ 1 30").await,
        ["+ 1 30 10", "- 1 10 10"]
    );
    assert_eq!(
        h.push(0, "- 1 30").await,
        Vec::<String>::new(),
        "one 30 is left"
    );
    assert_eq!(
        h.push(0, "- 1 30\n- 1 10").await,
        ["- 1 30 10"],
        "the group is gone"
    );
    assert_eq!(h.state(), [(SIZES, 1)]);
}

#[tokio::test]
async fn extreme_reads_only_the_largest_row() {
    let plan = aggregate("SELECT k, max(v) FROM t GROUP BY k", &[("k", I), ("v", I)]).await;
    let op = group_by(&plan);
    assert!(op.explain().contains("in order of the aggregated column"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(h.push(0, "+ 1 10\n+ 1 30\n+ 1 .").await, ["+ 1 30"]);
    assert_eq!(h.push(0, "- 1 30").await, ["+ 1 10", "- 1 30"]);
    h.restart(Box::new(group_by(&plan)));
    assert_eq!(
        h.push(0, "- 1 10").await,
        ["+ 1 .", "- 1 10"],
        "only NULL is left"
    );
    assert_eq!(h.push(0, "- 1 .").await, ["- 1 ."]);
}

#[tokio::test]
async fn merge_keeps_one_row_per_group() {
    let plan = aggregate(
        "SELECT k, count(*), sum(v), min(v), max(v) FROM t GROUP BY k",
        &[("k", I), ("v", I)],
    )
    .await;
    let merged =
        || group_by(&plan).with_merge(vec![Merge::Sum, Merge::Sum, Merge::Min, Merge::Max]);
    let op = merged();
    assert!(op.explain().contains("merged with each change"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(h.push(0, "+ 1 10\n+ 1 20").await, ["+ 1 2 30 10 20"]);
    assert_eq!(
        h.push(0, "+ 1 5\n+ 2 7").await,
        ["+ 1 3 35 5 20", "+ 2 1 7 7 7", "- 1 2 30 10 20"]
    );
    assert_eq!(h.state(), [(MERGED, 2)], "only the groups' rows");
    h.restart(Box::new(merged()));
    assert_eq!(h.push(0, "+ 2 9").await, ["+ 2 2 16 7 9", "- 2 1 7 7 7"]);
    let retraction = crate::testkit::changes(&input_of(&plan)[0], "- 2 9");
    let err = h.try_push(0, retraction).await.expect_err("a retraction");
    assert!(err.to_string().contains("retraction"), "{err}");
}

#[tokio::test]
async fn totals_follow_inserts_and_deletes() {
    let plan = aggregate(
        "SELECT k, count(*), sum(v), avg(v) FROM t GROUP BY k",
        &[("k", I), ("v", I)],
    )
    .await;
    let input = plan.inputs()[0].schema().clone();
    let v: Arc<dyn PhysicalExpr> = Arc::new(Column::new(
        "v",
        input.index_of_column_by_name(None, "v").expect("v"),
    ));
    let totals = || {
        group_by(&plan).with_totals(vec![
            Inverted {
                total: Total::Count,
                arg: None,
            },
            Inverted {
                total: Total::Sum,
                arg: Some(v.clone()),
            },
            Inverted {
                total: Total::Avg,
                arg: Some(v.clone()),
            },
        ])
    };
    let op = totals();
    assert!(op.explain().contains("running totals per group"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(h.push(0, "+ 1 10\n+ 1 20\n+ 1 .").await, ["+ 1 3 30 15.0"]);
    assert_eq!(
        h.push(0, "- 1 10").await,
        ["+ 1 2 20 20.0", "- 1 3 30 15.0"]
    );
    assert_eq!(h.state(), [(TOTALS, 1)]);
    h.restart(Box::new(totals()));
    assert_eq!(h.push(0, "- 1 .").await, ["+ 1 1 20 20.0", "- 1 2 20 20.0"]);
    assert_eq!(h.push(0, "- 1 20").await, ["- 1 1 20 20.0"]);
    assert_eq!(h.state(), [], "an empty group keeps nothing");
}

#[tokio::test]
async fn a_global_aggregate_has_a_row_over_no_rows() {
    let plan = aggregate("SELECT count(*) FROM t", &[("k", I)]).await;
    let mut h = Harness::new(Box::new(group_by(&plan)), input_of(&plan));
    assert_eq!(h.initialize().await, ["+ 0"]);
    assert_eq!(h.push(0, "+\n+").await, ["+ 2", "- 0"]);
    assert_eq!(h.push(0, "-\n-").await, ["+ 0", "- 2"]);
    h.restart(Box::new(group_by(&plan)));
    assert_eq!(h.initialize().await, Vec::<String>::new(), "it has its row");
}

/// A GROUP BY of `ts` whose groups close when the watermark passes `ts`.
fn windowed(plan: &LogicalPlan, emit_on_close: bool) -> GroupBy {
    let watermark: Arc<dyn PhysicalExpr> = Arc::new(Column::new(WATERMARK_COLUMN, 0));
    group_by(plan).with_window(WindowClose {
        columns: vec![(
            0,
            Bound {
                exprs: vec![watermark],
                watermark_type: ts(),
            },
        )],
        emit_on_close,
        event_time: Some(0),
    })
}

#[tokio::test]
async fn windows_close_with_the_watermark_and_late_rows_are_dropped() {
    let plan = aggregate(
        "SELECT ts, count(*) FROM t GROUP BY ts",
        &[("ts", ts()), ("v", I)],
    )
    .await;
    let op = windowed(&plan, false);
    assert!(op
        .explain()
        .ends_with("; frees a window when the watermark closes it)"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(h.push(0, "+ 100\n+ 200").await, ["+ 100 1", "+ 200 1"]);
    assert_eq!(h.watermark(&[Some(150)]).await, Vec::<String>::new());
    assert_eq!(h.push(0, "+ 100").await, Vec::<String>::new());
    assert_eq!(h.take_late(), ["+ 100"]);
    assert_eq!(h.push(0, "+ 200").await, ["+ 200 2", "- 200 1"]);
    // Window 100 is gone; 200 keeps its row, the slots their bound.
    assert_eq!(
        h.state(),
        [(INPUT[0], 1), (OUTPUT, 1), (SLOTS, 2), (SIZES, 1)]
    );
    h.restart(Box::new(windowed(&plan, false)));
    assert_eq!(h.push(0, "+ 120").await, Vec::<String>::new(), "still late");
    assert_eq!(h.take_late(), ["+ 120"]);
    assert_eq!(h.watermark(&[Some(300)]).await, Vec::<String>::new());
    assert_eq!(h.state(), [(SLOTS, 2), (SIZES, 1)]);
}

#[tokio::test]
async fn emit_on_window_close_emits_each_window_once() {
    let plan = aggregate(
        "SELECT ts, count(*) FROM t GROUP BY ts",
        &[("ts", ts()), ("v", I)],
    )
    .await;
    let op = windowed(&plan, true).with_merge(vec![Merge::Sum]);
    assert!(op
        .explain()
        .contains("emits each window's row when the watermark closes it"));
    let mut h = Harness::new(Box::new(op), input_of(&plan));
    assert_eq!(h.push(0, "+ 100\n+ 100\n+ 200").await, Vec::<String>::new());
    assert_eq!(h.watermark(&[Some(150)]).await, ["+ 100 2"]);
    assert_eq!(
        h.watermark(&[Some(150)]).await,
        Vec::<String>::new(),
        "once"
    );
    h.restart(Box::new(windowed(&plan, true).with_merge(vec![Merge::Sum])));
    assert_eq!(h.push(0, "+ 200").await, Vec::<String>::new());
    assert_eq!(h.watermark(&[Some(201)]).await, ["+ 200 2"]);
    assert_eq!(h.state(), [(SLOTS, 2)]);
}

#[tokio::test]
async fn totals_are_not_kept_for_a_window() {
    // Running totals and the slots share a side byte: never both.
    let plan = aggregate(
        "SELECT ts, count(*) FROM t GROUP BY ts",
        &[("ts", ts()), ("v", I)],
    )
    .await;
    let op = windowed(&plan, false).with_totals(vec![Inverted {
        total: Total::Count,
        arg: None,
    }]);
    assert!(!op.explain().contains("running totals"));
    let global = aggregate("SELECT count(*) FROM t", &[("k", I)]).await;
    let op = group_by(&global).with_totals(vec![Inverted {
        total: Total::Count,
        arg: None,
    }]);
    assert!(!op.explain().contains("running totals"), "no group column");
}
