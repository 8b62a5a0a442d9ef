//! Unit tests of [`Join`] and [`IntervalJoin`], written as changes in and
//! out.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::PhysicalExpr;

use super::*;
use crate::operators::event_time::{Bound, WATERMARK_COLUMN};
use crate::operators::layout::partitioned::{INPUT, SIZES, SLOTS};
use crate::testkit::{arrow, node, physical, plan, Harness};

const I: DataType = DataType::Int64;

async fn join_plan(sql: &str) -> LogicalPlan {
    let plan = plan(
        sql,
        &[("a", &[("k", I), ("x", I)]), ("b", &[("k", I), ("y", I)])],
    )
    .await;
    node(&plan, |p| matches!(p, LogicalPlan::Join(_)))
}

fn sides(plan: &LogicalPlan) -> (PartitionedInput, PartitionedInput) {
    let LogicalPlan::Join(j) = plan else {
        panic!("not a join")
    };
    let (left, right): (Vec<Expr>, Vec<Expr>) = j.on.iter().cloned().unzip();
    (
        PartitionedInput {
            df_schema: j.left.schema().clone(),
            keys: physical(&left, j.left.schema()),
        },
        PartitionedInput {
            df_schema: j.right.schema().clone(),
            keys: physical(&right, j.right.schema()),
        },
    )
}

fn join(plan: &LogicalPlan) -> Join {
    let (left, right) = sides(plan);
    Join::try_new(plan.clone(), left, right, "Join".into()).expect("join")
}

fn inputs(plan: &LogicalPlan) -> Vec<SchemaRef> {
    plan.inputs().iter().map(|i| arrow(i.schema())).collect()
}

#[tokio::test]
async fn an_inner_join_joins_each_change_with_the_other_side() {
    let plan = join_plan("SELECT * FROM a JOIN b ON a.k = b.k").await;
    let mut h = Harness::new(Box::new(join(&plan)), inputs(&plan));
    assert_eq!(h.push(0, "+ 1 10\n+ 2 20").await, Vec::<String>::new());
    assert_eq!(
        h.push(1, "+ 1 100\n+ 1 101").await,
        ["+ 1 10 1 100", "+ 1 10 1 101"]
    );
    assert_eq!(
        h.push(0, "- 1 10\n+ 1 11").await,
        [
            "+ 1 11 1 100",
            "+ 1 11 1 101",
            "- 1 10 1 100",
            "- 1 10 1 101"
        ]
    );
    assert_eq!(h.state(), [(INPUT[0], 2), (INPUT[1], 2), (SIZES, 1)]);
    h.restart(Box::new(join(&plan)));
    assert_eq!(
        h.push(1, "- 1 100\n+ 2 200").await,
        ["+ 2 20 2 200", "- 1 11 1 100"]
    );
}

#[tokio::test]
async fn a_left_join_revises_its_null_rows() {
    let plan = join_plan("SELECT * FROM a LEFT JOIN b ON a.k = b.k").await;
    let mut h = Harness::new(Box::new(join(&plan)), inputs(&plan));
    assert_eq!(h.push(0, "+ 1 10").await, ["+ 1 10 . ."]);
    assert_eq!(h.push(1, "+ 1 100").await, ["+ 1 10 1 100", "- 1 10 . ."]);
    h.restart(Box::new(join(&plan)));
    assert_eq!(h.push(1, "- 1 100").await, ["+ 1 10 . .", "- 1 10 1 100"]);
    assert_eq!(h.push(0, "- 1 10").await, ["- 1 10 . ."]);
    assert_eq!(h.state(), [(SIZES, 1)]);
}

#[tokio::test]
async fn a_range_condition_reads_only_rows_in_range() {
    let plan = join_plan("SELECT * FROM a JOIN b ON a.k = b.k AND a.x >= b.y").await;
    let op = join(&plan);
    assert!(op.explain().contains("in order of the compared columns"));
    let mut h = Harness::new(Box::new(op), inputs(&plan));
    assert_eq!(h.push(0, "+ 1 10").await, Vec::<String>::new());
    assert_eq!(
        h.push(1, "+ 1 5\n+ 1 10\n+ 1 20\n+ 2 1").await,
        ["+ 1 10 1 10", "+ 1 10 1 5"]
    );
    h.restart(Box::new(join(&plan)));
    assert_eq!(
        h.push(0, "+ 1 30\n- 1 10").await,
        [
            "+ 1 30 1 10",
            "+ 1 30 1 20",
            "+ 1 30 1 5",
            "- 1 10 1 10",
            "- 1 10 1 5"
        ]
    );
}

/// `b.y BETWEEN a.x AND a.x + 10`, with times as integers: a row of `a`
/// expires once `x + 10` is below b's watermark, a row of `b` once `y` is
/// below a's.
fn interval(plan: &LogicalPlan) -> IntervalJoin {
    let watermark: Arc<dyn PhysicalExpr> = Arc::new(Column::new(WATERMARK_COLUMN, 0));
    let bound = || Bound {
        exprs: vec![watermark.clone()],
        watermark_type: I,
    };
    let expiries = vec![
        Expiry {
            side: 0,
            column: 1,
            offset: 10,
            other: 1,
            other_column: 1,
            bound: bound(),
            other_event_time: None,
        },
        Expiry {
            side: 1,
            column: 1,
            offset: 0,
            other: 0,
            other_column: 1,
            bound: bound(),
            other_event_time: None,
        },
    ];
    IntervalJoin::new(join(plan), expiries)
}

#[tokio::test]
async fn an_interval_join_frees_rows_out_of_reach_and_drops_late_ones() {
    let plan =
        join_plan("SELECT * FROM a JOIN b ON a.k = b.k AND b.y BETWEEN a.x AND a.x + 10").await;
    let op = interval(&plan);
    assert!(op
        .explain()
        .ends_with("; frees rows the watermark puts out of reach)"));
    let mut h = Harness::new(Box::new(op), inputs(&plan));
    assert_eq!(h.push(0, "+ 1 100\n+ 1 300").await, Vec::<String>::new());
    assert_eq!(h.push(1, "+ 1 105\n+ 1 150").await, ["+ 1 100 1 105"]);
    // Both watermarks at 200: a's row 100 (100 + 10 < 200) and b's rows
    // (below 200) can meet nothing to come; a's 300 stays.
    assert_eq!(
        h.watermark(&[Some(200), Some(200)]).await,
        Vec::<String>::new()
    );
    assert_eq!(h.state(), [(INPUT[0], 1), (SLOTS, 3), (SIZES, 1)]);
    assert_eq!(h.push(0, "+ 1 150").await, Vec::<String>::new());
    assert_eq!(h.take_late(), ["+ 1 150"]);
    h.restart(Box::new(interval(&plan)));
    assert_eq!(
        h.push(1, "+ 1 199").await,
        Vec::<String>::new(),
        "still late"
    );
    assert_eq!(h.take_late(), ["+ 1 199"]);
    assert_eq!(h.push(1, "+ 1 305").await, ["+ 1 300 1 305"]);
}
