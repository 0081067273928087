//! The shared [`Store`] suite against the SQLite back end (a real file in a temp dir per
//! test), plus checks that only make sense for SQLite: reopening files, migrations and
//! several processes sharing one database.

mod suite;

use errand_core::Status;
use errand_store::{SqliteStore, Store, StoreError};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use tempfile::TempDir;

/// A fresh store on a new file. Keep the `TempDir` alive as long as the store.
fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("errand.db")).unwrap();
    (dir, store)
}

macro_rules! suite_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (_dir, store) = fresh();
                suite::$name(&store).await;
            }
        )*
    };
}

suite_tests!(
    create_task_roundtrip,
    create_task_rejects_bad_input,
    get_task_by_id_and_prefix,
    list_tasks_newest_first,
    list_tasks_status_filter,
    list_tasks_pagination,
    list_tasks_malformed_cursor,
    claim_oldest_first,
    claim_sets_lease_and_first_events,
    concurrent_claimers_never_share,
    transition_compare_and_set,
    task_status_is_derived_from_attempts,
    append_events_contiguous_under_concurrency,
    append_events_fencing,
    list_events_paging,
    heartbeat_and_cancel_running,
    cancel_queued_task,
    finish_attempt_done,
    finish_attempt_failed,
    update_usage_is_visible,
    set_setup_is_visible_and_fenced,
    requeue_expired_restarts_run,
    requeue_orphans_requeues_all_active,
    notifier_wakes_on_work_and_events,
    lease_ttl_extremes,
    finish_attempt_rejects_non_final_status,
    followup_requeues_a_finished_attempt_with_its_conversation,
    submitted_plan_waits_without_a_lease,
    plan_revise_then_approve,
    plan_reject_cancels_with_the_reason,
    submit_plan_after_cancel_releases_the_lease,
    review_settings_and_attempt_payloads_roundtrip,
    best_of_n_ranks_and_picks,
    followup_keeps_the_best_of_n_result,
    claim_result_delivery_once,
    cancel_cancels_every_attempt,
    checkpoint_is_fenced_and_only_moves_forward,
    requeue_rolls_back_to_the_checkpoint_and_the_claim_resumes_from_it,
    checkpoints_without_resume_and_after_cancel,
);

fn user_version(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durability_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errand.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    let state = suite::durability_write(&store).await;
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    suite::durability_check(&store, &state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errand.db");
    let store = SqliteStore::open(&path).unwrap();
    store.create_task(suite::new_task("durable")).await.unwrap();
    let c = suite::claim(&store, "w1").await;
    let cp = suite::checkpoint_at(&store, &c.attempt.id, 7).await;
    store.checkpoint(&c.attempt.id, "w1", &cp).await.unwrap();
    drop(store);
    // Like `errand serve` after a crash: orphans go back to the queue, then resume.
    let store = SqliteStore::open(&path).unwrap();
    store.requeue_orphans("the server restarted").await.unwrap();
    let c2 = suite::claim(&store, "w2").await;
    assert_eq!(c2.checkpoint, Some(cp));
    assert_eq!(c2.attempt.resumed_from, "checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopening_runs_migrations_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errand.db");
    let store = SqliteStore::open(&path).unwrap();
    let t = store.create_task(suite::new_task("keep me")).await.unwrap();
    drop(store);
    let version = user_version(&path);
    assert!(version >= 1, "migrations must record the schema version");

    for _ in 0..3 {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&path), version);
        assert_eq!(store.get_task(&t.id).await.unwrap(), t);
        let page = store
            .list_tasks(&errand_store::TaskQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.tasks.len(), 1);
    }
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errand.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::Db(msg)) => assert!(msg.contains("upgrade errand"), "{msg}"),
        Err(e) => panic!("expected a Db error, got {e:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
    // Refusing did not touch the file.
    assert_eq!(user_version(&path), 999);
}

#[tokio::test]
async fn open_fails_cleanly_on_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let r = SqliteStore::open(&dir.path().join("no/such/dir/errand.db"));
    assert!(matches!(r, Err(StoreError::Db(_))));
}

/// Clones of one store claiming from spawned tasks on a multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_claims_from_spawned_clones() {
    let (_dir, store) = fresh();
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        let t = store
            .create_task(suite::new_task(&format!("task {i}")))
            .await
            .unwrap();
        expected.insert(t.attempts[0].id.clone());
    }
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut got = Vec::new();
            while let Some(c) = store
                .claim_attempt(&suite::claim_req(&worker))
                .await
                .unwrap()
            {
                got.push(c.attempt.id);
            }
            got
        }));
    }
    let mut seen = BTreeSet::new();
    for h in handles {
        for id in h.await.unwrap() {
            assert!(seen.insert(id.clone()), "{id} claimed twice");
        }
    }
    assert_eq!(seen, expected);
}

/// Two `SqliteStore`s on the same file (like two processes) claim and append concurrently:
/// SQLite's file locking must keep claims exclusive and seqs contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn two_stores_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("errand.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());

    let mut expected = BTreeSet::new();
    for i in 0..20 {
        let t = a
            .create_task(suite::new_task(&format!("task {i}")))
            .await
            .unwrap();
        expected.insert(t.attempts[0].id.clone());
    }
    let mut handles = Vec::new();
    for (w, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        handles.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut got = Vec::new();
            while let Some(c) = store
                .claim_attempt(&suite::claim_req(&worker))
                .await
                .unwrap()
            {
                got.push((worker.clone(), c.attempt.id));
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for h in handles {
        claimed.extend(h.await.unwrap());
    }
    let ids: BTreeSet<String> = claimed.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), claimed.len(), "an attempt was claimed twice");
    assert_eq!(ids, expected);

    // Both stores append to the same attempt at once.
    let (worker, aid) = claimed[0].clone();
    let mut handles = Vec::new();
    for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (worker, aid) = (worker.clone(), aid.clone());
        handles.push(tokio::spawn(async move {
            for k in 0..40 {
                let owner = if k % 2 == 0 {
                    Some(worker.as_str())
                } else {
                    None
                };
                store
                    .append_events(&aid, owner, vec![suite::notice(format!("{i}/{k}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    for store in [&a, &b] {
        let events = suite::all_events(store.as_ref(), &aid).await;
        suite::assert_contiguous(&aid, &events);
        assert_eq!(events.len(), 2 + 80);
        assert_eq!(store.get_attempt(&aid).await.unwrap().last_seq, 82);
    }
    // A write through one is visible through the other.
    b.transition(&aid, &worker, Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    assert_eq!(a.get_attempt(&aid).await.unwrap().status, Status::Running);
}
