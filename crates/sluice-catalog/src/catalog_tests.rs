//! Tests of the catalog: persistence, drops, changes.
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use sluice_common::ChangeBatch;
use sluice_sql::Statement;
use sluice_state::{MemoryBackend, RocksBackend};

use super::*;

fn create(sql: &str) -> CreateRelation {
    match sluice_sql::parse(sql).expect("parses").remove(0) {
        Statement::CreateRelation(c) => *c,
        _ => panic!("not a create"),
    }
}

fn batch(rel: &Relation, ids: Vec<i64>, names: Vec<&str>) -> RecordBatch {
    RecordBatch::try_new(
        rel.schema(),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(names)),
        ],
    )
    .expect("batch")
}

#[tokio::test]
async fn tables_upsert_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open(dir.path()).expect("open"));
        let catalog = Catalog::open(store.clone()).expect("catalog");
        catalog
            .create(&create("CREATE TABLE u (id BIGINT PRIMARY KEY, name TEXT)"))
            .await
            .expect("create");
        let u = catalog.require("u", ObjectKind::Table).expect("u");
        let mut txn = StateTxn::new(store.clone());
        let first = u
            .upsert(&mut txn, &batch(&u, vec![1, 2, 2], vec!["a", "x", "b"]))
            .expect("upsert");
        // The later row of key 2 wins within one batch.
        assert_eq!(
            first,
            ChangeBatch::new(batch(&u, vec![1, 2], vec!["a", "b"]), vec![1, 1])
        );
        let second = u
            .upsert(&mut txn, &batch(&u, vec![1, 2], vec!["a2", "b"]))
            .expect("upsert");
        // Replacing retracts the old row; the same row again changes nothing.
        let expected = ChangeBatch::new(batch(&u, vec![1, 1], vec!["a", "a2"]), vec![-1, 1]);
        assert_eq!(second, expected);
        txn.commit().expect("commit");
    }
    let store: Arc<dyn StateBackend> = Arc::new(RocksBackend::open(dir.path()).expect("open"));
    let catalog = Catalog::open(store.clone()).expect("catalog");
    let u = catalog.require("u", ObjectKind::Table).expect("u survives");
    let rows = u.read_rows(&store).expect("rows");
    assert_eq!(rows, batch(&u, vec![1, 2], vec!["a2", "b"]));
}

#[tokio::test]
async fn dropping_a_view_removes_its_rows_and_operator_state() {
    let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let catalog = Catalog::open(store.clone()).expect("catalog");
    catalog
        .create(&create("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT)"))
        .await
        .expect("create");
    let t = catalog.require("t", ObjectKind::Table).expect("t");
    let view = catalog
        .new_view("v", "SELECT * FROM t", &t.schema(), vec!["t".into()], false)
        .expect("view");
    let mut txn = StateTxn::new(store.clone());
    let rows = ChangeBatch::inserts(batch(&t, vec![1, 1], vec!["a", "a"]));
    view.apply_view_changes(&mut txn, &rows).expect("rows");
    let mut state = crate::state_prefix(view.entry().id);
    state.extend_from_slice(b"operator");
    txn.put(state, b"1".to_vec());
    catalog.register_view(&view, &mut txn).expect("register");
    catalog.commit(txn).await.expect("commit");
    catalog.publish(view.clone()).expect("publish");
    // A multiset: the same row twice.
    assert_eq!(view.read_view_rows(&store).expect("read").num_rows(), 2);

    let Statement::Drop(d) = sluice_sql::parse("DROP TABLE t").expect("p").remove(0) else {
        panic!()
    };
    assert_eq!(
        catalog.drop_relations(&d).await.unwrap_err().sqlstate(),
        "2BP01"
    );
    let Statement::Drop(d) = sluice_sql::parse("DROP TABLE t CASCADE")
        .expect("p")
        .remove(0)
    else {
        panic!()
    };
    let dropped = catalog.drop_relations(&d).await.expect("drop");
    assert_eq!(dropped.len(), 2);
    assert_eq!(dropped[0].name(), "v", "dependents go first");
    for prefix in [STATE_PREFIX, VIEW_ROWS_PREFIX, ENTRY_PREFIX] {
        assert!(store.scan_prefix(&[prefix]).expect("scan").is_empty());
    }
    // Reopened, the catalog knows neither.
    let reopened = Catalog::open(store).expect("reopen");
    assert!(reopened.names().expect("names").is_empty());
}

#[tokio::test]
async fn streams_append_and_drop_forgets_rows() {
    let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let catalog = Catalog::open(store.clone()).expect("catalog");
    catalog
        .create(&create("CREATE STREAM s (id BIGINT, name TEXT)"))
        .await
        .expect("create");
    let s = catalog.require("s", ObjectKind::Stream).expect("s");
    let mut txn = StateTxn::new(store.clone());
    s.append(&mut txn, &batch(&s, vec![1], vec!["x"]))
        .expect("append");
    s.append(&mut txn, &batch(&s, vec![1], vec!["x"]))
        .expect("append");
    txn.commit().expect("commit");
    assert_eq!(s.read_log(&store).expect("log").len(), 2);

    let err = catalog
        .create(&create("CREATE TABLE s (id BIGINT PRIMARY KEY)"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "stream \"s\" already exists");
    assert_eq!(
        catalog
            .create(&create("CREATE STREAM IF NOT EXISTS s (id BIGINT)"))
            .await
            .expect("if not exists"),
        Created::AlreadyExisted
    );

    let Statement::Drop(d) = sluice_sql::parse("DROP TABLE s").expect("p").remove(0) else {
        panic!()
    };
    assert_eq!(
        catalog.drop_relations(&d).await.unwrap_err().sqlstate(),
        "42809"
    );
    let Statement::Drop(d) = sluice_sql::parse("DROP STREAM s").expect("p").remove(0) else {
        panic!()
    };
    catalog.drop_relations(&d).await.expect("drop");
    assert!(store.scan_prefix(&[LOG_PREFIX]).expect("scan").is_empty());
    assert_eq!(
        catalog.drop_relations(&d).await.unwrap_err().to_string(),
        "stream \"s\" does not exist"
    );
}

#[tokio::test]
async fn an_appended_view_keeps_its_batches_across_a_reopen_and_refuses_retractions() {
    let store: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let catalog = Catalog::open(store.clone()).expect("catalog");
    catalog
        .create(&create("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT)"))
        .await
        .expect("create");
    let t = catalog.require("t", ObjectKind::Table).expect("t");
    let view = catalog
        .new_view("v", "SELECT * FROM s", &t.schema(), vec!["t".into()], true)
        .expect("view");
    let mut txn = StateTxn::new(store.clone());
    let rows = ChangeBatch::inserts(batch(&t, vec![1, 1], vec!["a", "a"]));
    view.apply_view_changes(&mut txn, &rows).expect("rows");
    let retraction = ChangeBatch::new(batch(&t, vec![1], vec!["a"]), vec![-1]);
    let refused = view.apply_view_changes(&mut txn, &retraction).unwrap_err();
    assert!(refused.to_string().contains("retraction"), "{refused}");
    catalog.register_view(&view, &mut txn).expect("register");
    catalog.commit(txn).await.expect("commit");
    drop(catalog);

    // Reopened, the view numbers its next batch after the stored ones.
    let catalog = Catalog::open(store.clone()).expect("reopen");
    let view = catalog.require("v", ObjectKind::View).expect("v");
    assert!(view.entry().appended);
    let mut txn = StateTxn::new(store.clone());
    let more = ChangeBatch::inserts(batch(&t, vec![2], vec!["b"]));
    view.apply_view_changes(&mut txn, &more).expect("more");
    catalog.commit(txn).await.expect("commit");
    let read = view.read_view_rows(&store).expect("read");
    assert_eq!(read, batch(&t, vec![1, 1, 2], vec!["a", "a", "b"]));
}
