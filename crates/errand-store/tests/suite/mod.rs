//! The back-end-agnostic contract of [`Store`]: every back end (SQLite today, PostgreSQL
//! later) runs each of these functions against a fresh, empty store, one test per function.
//!
//! Each function creates its own tasks (with ids from [`errand_core::new_id`]) and asserts
//! specific outcomes. Functions that look at the queue (claim order, "no work") or at task
//! listings assume the store holds nothing but what they created, so give each one a fresh
//! store (a new file for SQLite, a new schema or database for PostgreSQL).
//!
//! A back end's test file includes this module with `mod suite;` and calls each function.

// A back end's test file may not call every helper.
#![allow(dead_code)]

use errand_core::{
    CheckResult, CheckSpec, DiffStats, EnvironmentSnapshot, Event, EventKind, FileStat, NewAttempt,
    NewTask, OutputStream, SetupInfo, Status, Task, TestCounts, Usage, new_id, now_ms, short_id,
};
use errand_store::{
    AttemptOutcome, Checkpoint, ClaimRequest, ClaimedAttempt, LeaseState, Store, StoreError,
    TaskQuery,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A realistic task with one attempt and a fresh id.
pub fn new_task(title: &str) -> NewTask {
    new_task_with(new_id(), title, 1)
}

/// A task with `attempts` attempts (numbered from 1) and a fresh id.
pub fn new_task_with_attempts(title: &str, attempts: usize) -> NewTask {
    new_task_with(new_id(), title, attempts)
}

/// A task with the given id and number of attempts.
pub fn new_task_with(id: String, title: &str, attempts: usize) -> NewTask {
    let short = short_id(&id).to_string();
    let model = "scripted:/tmp/turns.json".to_string();
    NewTask {
        prompt: format!("Please {title}."),
        title: title.to_string(),
        repo: "/srv/repos/sample".into(),
        base_ref: "main".into(),
        base_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        environment: EnvironmentSnapshot {
            name: Some("default".into()),
            checks: vec![CheckSpec {
                name: "tests".into(),
                command: "cargo test".into(),
                junit: Some("target/nextest/ci/junit.xml".into()),
            }],
            env: BTreeMap::from([("RUST_LOG".to_string(), "debug".to_string())]),
            rootfs: None,
            ..Default::default()
        },
        model: model.clone(),
        model_payload: None,
        mode: "run".into(),
        trigger: "cli".into(),
        created_by: "tester".into(),
        attempts: (1..=attempts as i64)
            .map(|number| NewAttempt {
                id: new_id(),
                number,
                branch: format!("errand/{short}-{number}"),
                model: model.clone(),
                ..Default::default()
            })
            .collect(),
        id,
        ..Default::default()
    }
}

/// A claim with a one-minute lease.
pub fn claim_req(worker: &str) -> ClaimRequest {
    claim_req_ttl(worker, 60_000)
}

pub fn claim_req_ttl(worker: &str, lease_ttl_ms: i64) -> ClaimRequest {
    ClaimRequest {
        worker: worker.to_string(),
        sandbox: "bubblewrap".into(),
        isolated: true,
        lease_ttl_ms,
    }
}

pub fn notice(message: impl Into<String>) -> EventKind {
    EventKind::Notice {
        message: message.into(),
    }
}

/// Claims the next attempt, which must exist.
pub async fn claim(store: &dyn Store, worker: &str) -> ClaimedAttempt {
    store
        .claim_attempt(&claim_req(worker))
        .await
        .unwrap()
        .expect("an attempt to claim")
}

/// Every event of an attempt, read in pages.
pub async fn all_events(store: &dyn Store, attempt_id: &str) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    loop {
        let after = out.last().map(|e| e.seq).unwrap_or(0);
        let page = store.list_events(attempt_id, after, 100).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Seqs are exactly 1, 2, …, N and every event belongs to `attempt_id`.
pub fn assert_contiguous(attempt_id: &str, events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as i64 + 1,
            "seq gap or duplicate at index {i}: {events:#?}"
        );
        assert_eq!(e.attempt_id, attempt_id);
    }
}

pub fn status_events(events: &[Event]) -> Vec<(Status, Status, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Status { from, to, reason } => Some((*from, *to, reason.clone())),
            _ => None,
        })
        .collect()
}

/// Polls all futures concurrently (like `futures::future::join_all`) and returns their
/// outputs in order. Lets the suite run many store calls at once through a `&dyn Store`.
pub async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// Sleeps long enough for the millisecond clock to move on.
pub async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

fn page_ids(tasks: &[Task]) -> Vec<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

/// Walks every page of a listing; panics if it does not end.
async fn list_all_pages(
    store: &dyn Store,
    status: Option<Status>,
    limit: usize,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    for _ in 0..1000 {
        let page = store
            .list_tasks(&TaskQuery {
                status,
                limit,
                cursor: cursor.clone(),
            })
            .await
            .unwrap();
        pages.push(page_ids(&page.tasks));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return pages,
        }
    }
    panic!("pagination did not terminate");
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

/// create_task stores every field and returns the task with its queued attempts.
pub async fn create_task_roundtrip(store: &dyn Store) {
    let new = new_task_with_attempts("fix the flaky test", 2);
    let before = now_ms();
    let created = store.create_task(new.clone()).await.unwrap();

    assert_eq!(created.id, new.id);
    assert_eq!(created.short_id, short_id(&new.id));
    assert_eq!(created.title, new.title);
    assert_eq!(created.prompt, new.prompt);
    assert_eq!(created.repo, new.repo);
    assert_eq!(created.base_ref, new.base_ref);
    assert_eq!(created.base_commit, new.base_commit);
    assert_eq!(created.environment, new.environment);
    assert_eq!(created.model, new.model);
    assert_eq!(created.mode, new.mode);
    assert_eq!(created.trigger, new.trigger);
    assert_eq!(created.created_by, new.created_by);
    assert_eq!(created.status, Status::Queued);
    assert_eq!(created.error, None);
    assert!(created.created_at_ms >= before - 1000 && created.created_at_ms <= now_ms());
    assert_eq!(created.attempts.len(), 2);
    for (a, n) in created.attempts.iter().zip(&new.attempts) {
        assert_eq!(a.id, n.id);
        assert_eq!(a.task_id, new.id);
        assert_eq!(a.number, n.number);
        assert_eq!(a.branch, n.branch);
        assert_eq!(a.model, n.model);
        assert_eq!(a.status, Status::Queued);
        assert_eq!(a.runs, 0);
        assert_eq!(a.last_seq, 0);
        assert_eq!(a.worker, None);
        assert_eq!(a.active_worker, None);
        assert_eq!(a.started_at_ms, None);
        assert_eq!(a.finished_at_ms, None);
        assert_eq!(a.usage, Usage::default());
        assert!(a.checks.is_empty());
    }
    assert_eq!(created.result_attempt().map(|a| a.number), Some(1));

    // get_task returns the same thing, and so does get_attempt for each attempt.
    let got = store.get_task(&new.id).await.unwrap();
    assert_eq!(got, created);
    for a in &created.attempts {
        assert_eq!(&store.get_attempt(&a.id).await.unwrap(), a);
        assert_eq!(store.get_diff(&a.id).await.unwrap(), None);
        assert!(store.list_events(&a.id, 0, 100).await.unwrap().is_empty());
    }
}

/// A task without attempts is refused; a duplicate id fails and leaves the original intact.
pub async fn create_task_rejects_bad_input(store: &dyn Store) {
    let mut empty = new_task("nothing to do");
    empty.attempts.clear();
    let err = store.create_task(empty.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(matches!(
        store.get_task(&empty.id).await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    let original = store.create_task(new_task("original")).await.unwrap();
    let mut dup = new_task_with(original.id.clone(), "duplicate", 1);
    dup.prompt = "overwrite me".into();
    assert!(store.create_task(dup).await.is_err());
    let after = store.get_task(&original.id).await.unwrap();
    assert_eq!(after, original);
    // The failed insert is all-or-nothing: it left no attempt behind.
    let page = store
        .list_tasks(&TaskQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page_ids(&page.tasks), vec![original.id.clone()]);
}

/// get_task by full id, unique prefix and short id; ambiguous, unknown and malformed input.
pub async fn get_task_by_id_and_prefix(store: &dyn Store) {
    let base = new_id();
    let stem = &base[..10];
    let id_a = format!("{stem}00");
    let id_b = format!("{stem}11");
    let a = store
        .create_task(new_task_with(id_a.clone(), "a", 1))
        .await
        .unwrap();
    let b = store
        .create_task(new_task_with(id_b.clone(), "b", 1))
        .await
        .unwrap();
    let other = store.create_task(new_task("other")).await.unwrap();

    assert_eq!(store.get_task(&id_a).await.unwrap(), a);
    assert_eq!(store.get_task(&id_b).await.unwrap(), b);
    assert_eq!(store.get_task(&format!("{stem}0")).await.unwrap().id, id_a);
    assert_eq!(store.get_task(&format!("{stem}1")).await.unwrap().id, id_b);
    assert_eq!(store.get_task(&other.short_id).await.unwrap(), other);

    // A prefix shared by two tasks is ambiguous, not an arbitrary pick.
    for prefix in [stem, &stem[..9]] {
        match store.get_task(prefix).await {
            Err(StoreError::Ambiguous(msg)) => assert!(msg.contains(prefix), "{msg}"),
            other => panic!("prefix {prefix}: expected Ambiguous, got {other:?}"),
        }
    }

    // Unknown: NotFound, with a hint to list the tasks.
    let unknown = format!("{stem}22");
    match store.get_task(&unknown).await {
        Err(StoreError::NotFound(msg)) => {
            assert!(msg.contains("errand ls"), "{msg}");
            assert!(msg.contains(&unknown), "{msg}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Characters outside the id alphabet, empty input and too-long input: NotFound, never an
    // error from the database and never a match.
    let too_long = format!("{id_a}0");
    for bad in [
        "",
        "ABC",
        &id_a.to_uppercase(),
        "../etc",
        "%",
        "_",
        "' OR 1=1 --",
        "a b",
        &too_long,
        "ilou",
    ] {
        match store.get_task(bad).await {
            Err(StoreError::NotFound(msg)) => assert!(msg.contains("errand ls"), "{msg}"),
            other => panic!("{bad:?}: expected NotFound, got {other:?}"),
        }
    }
}

/// list_tasks returns the newest task first, with attempts loaded.
pub async fn list_tasks_newest_first(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .create_task(new_task_with_attempts(&format!("task {i}"), 2))
                .await
                .unwrap()
                .id,
        );
        tick().await;
    }
    let page = store
        .list_tasks(&TaskQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    ids.reverse();
    assert_eq!(page_ids(&page.tasks), ids);
    assert_eq!(page.next_cursor, None);
    for t in &page.tasks {
        assert_eq!(t.attempts.len(), 2, "listed tasks carry their attempts");
        assert_eq!(t.attempts[0].number, 1);
        assert_eq!(t.attempts[1].number, 2);
    }
    for w in page.tasks.windows(2) {
        assert!(w[0].created_at_ms >= w[1].created_at_ms);
    }

    // A limit of 0 is treated as 1, not as "nothing" or "everything".
    let page = store
        .list_tasks(&TaskQuery {
            limit: 0,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page_ids(&page.tasks), vec![ids[0].clone()]);
    assert!(page.next_cursor.is_some());
}

/// The status filter matches the task's derived status.
pub async fn list_tasks_status_filter(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            store
                .create_task(new_task(&format!("task {i}")))
                .await
                .unwrap()
                .id,
        );
        tick().await;
    }
    let claimed = claim(store, "w1").await; // the oldest: ids[0]
    assert_eq!(claimed.task.id, ids[0]);
    store.cancel_task(&ids[1], "not needed").await.unwrap();

    let ids_with = |status: Status| async move {
        let page = store
            .list_tasks(&TaskQuery {
                status: Some(status),
                limit: 100,
                cursor: None,
            })
            .await
            .unwrap();
        for t in &page.tasks {
            assert_eq!(t.status, status);
        }
        page_ids(&page.tasks)
    };
    assert_eq!(
        ids_with(Status::Queued).await,
        vec![ids[3].clone(), ids[2].clone()]
    );
    assert_eq!(ids_with(Status::Preparing).await, vec![ids[0].clone()]);
    assert_eq!(ids_with(Status::Cancelled).await, vec![ids[1].clone()]);
    assert!(ids_with(Status::Done).await.is_empty());
    assert!(ids_with(Status::Running).await.is_empty());

    store
        .transition(
            &claimed.attempt.id,
            "w1",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    assert_eq!(ids_with(Status::Running).await, vec![ids[0].clone()]);
    assert!(ids_with(Status::Preparing).await.is_empty());
}

/// Following `next_cursor` visits every task exactly once, with and without a filter, even
/// when many tasks share a creation millisecond.
pub async fn list_tasks_pagination(store: &dyn Store) {
    // No sleeps: several tasks share a millisecond, so the cursor's tie-break matters.
    let mut created = Vec::new();
    for i in 0..25 {
        created.push(
            store
                .create_task(new_task(&format!("task {i}")))
                .await
                .unwrap()
                .id,
        );
    }

    let pages = list_all_pages(store, None, 10).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    let all: Vec<String> = pages.concat();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 25, "duplicates across pages: {all:?}");
    assert_eq!(unique, created.iter().collect::<HashSet<_>>());

    // The pages concatenated are the same order as one big page.
    let one = store
        .list_tasks(&TaskQuery {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page_ids(&one.tasks), all);
    assert_eq!(one.next_cursor, None);

    // An exact multiple of the page size ends without an empty extra page.
    let pages = list_all_pages(store, None, 5).await;
    assert_eq!(pages.len(), 5);
    assert!(pages.iter().all(|p| p.len() == 5));

    // With a filter: cancel 7, page through the 18 queued ones 6 at a time.
    let cancelled: HashSet<String> = created.iter().step_by(4).take(7).cloned().collect();
    assert_eq!(cancelled.len(), 7);
    for id in &cancelled {
        store.cancel_task(id, "trim").await.unwrap();
    }
    let pages = list_all_pages(store, Some(Status::Queued), 6).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![6, 6, 6]);
    let queued: Vec<String> = pages.concat();
    let queued_set: HashSet<String> = queued.iter().cloned().collect();
    assert_eq!(queued_set.len(), 18);
    assert!(queued_set.is_disjoint(&cancelled));
    let pages = list_all_pages(store, Some(Status::Cancelled), 3).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(
        pages.concat().into_iter().collect::<HashSet<_>>(),
        cancelled
    );
}

/// A cursor that did not come from the store is rejected as Invalid.
pub async fn list_tasks_malformed_cursor(store: &dyn Store) {
    store.create_task(new_task("one")).await.unwrap();
    for bad in ["garbage", "", "abc:def", "12x:abc", ":"] {
        let r = store
            .list_tasks(&TaskQuery {
                status: None,
                limit: 10,
                cursor: Some(bad.to_string()),
            })
            .await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "cursor {bad:?}: expected Invalid, got {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Claiming
// ---------------------------------------------------------------------------------------------

/// The oldest queued attempt is claimed first; with no work left, claim returns None.
pub async fn claim_oldest_first(store: &dyn Store) {
    assert!(
        store
            .claim_attempt(&claim_req("w1"))
            .await
            .unwrap()
            .is_none()
    );
    let mut attempts = Vec::new();
    for i in 0..4 {
        let t = store
            .create_task(new_task(&format!("task {i}")))
            .await
            .unwrap();
        attempts.push(t.attempts[0].id.clone());
        tick().await;
    }
    for expected in &attempts {
        let c = claim(store, "w1").await;
        assert_eq!(&c.attempt.id, expected);
    }
    assert!(
        store
            .claim_attempt(&claim_req("w1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim_attempt(&claim_req("w2"))
            .await
            .unwrap()
            .is_none()
    );
}

/// A claimed attempt is preparing, on run 1, leased to the worker; its first events are
/// `claimed` (stating the sandbox) and then the status change.
pub async fn claim_sets_lease_and_first_events(store: &dyn Store) {
    let mut new = new_task("claim me");
    let payload = serde_json::json!({"turns": [{"text": "hello"}]});
    new.model_payload = Some(payload.clone());
    let created = store.create_task(new).await.unwrap();
    let attempt_id = created.attempts[0].id.clone();

    let before = now_ms();
    let c = store
        .claim_attempt(&ClaimRequest {
            worker: "worker-7".into(),
            sandbox: "none".into(),
            isolated: false,
            lease_ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .expect("work");
    assert_eq!(c.run, 1);
    assert_eq!(c.model_payload, Some(payload));
    assert_eq!(c.attempt.id, attempt_id);
    assert_eq!(c.attempt.status, Status::Preparing);
    assert_eq!(c.attempt.runs, 1);
    assert_eq!(c.attempt.worker.as_deref(), Some("worker-7"));
    assert_eq!(c.attempt.active_worker.as_deref(), Some("worker-7"));
    assert_eq!(c.attempt.last_seq, 2);
    assert!(c.attempt.started_at_ms.is_some_and(|t| t >= before - 1000));
    assert_eq!(c.attempt.finished_at_ms, None);
    assert_eq!(c.task.id, created.id);
    assert_eq!(c.task.status, Status::Preparing);
    assert_eq!(c.task.prompt, created.prompt);
    assert_eq!(c.task.environment, created.environment);
    assert_eq!(c.task.attempts.len(), 1);
    assert_eq!(c.task.attempts[0], c.attempt);

    // Same view through the getters.
    assert_eq!(store.get_attempt(&attempt_id).await.unwrap(), c.attempt);
    assert_eq!(
        store.get_task(&created.id).await.unwrap().status,
        Status::Preparing
    );

    let events = all_events(store, &attempt_id).await;
    assert_contiguous(&attempt_id, &events);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].kind,
        EventKind::Claimed {
            worker: "worker-7".into(),
            sandbox: "none".into(),
            isolated: false,
            resumed_from: "start".into(),
            note: None,
            turn: None,
            rolled_back_events: None,
        }
    );
    assert_eq!(
        events[1].kind,
        EventKind::Status {
            from: Status::Queued,
            to: Status::Preparing,
            reason: None,
        }
    );
    assert!(events.iter().all(|e| e.run == 1));
    assert!(events.iter().all(|e| e.ts_ms >= before - 1000));

    // The lease is held: a heartbeat says so.
    assert_eq!(
        store
            .heartbeat(&attempt_id, "worker-7", 60_000)
            .await
            .unwrap(),
        LeaseState::Held
    );

    // A task without a payload gets None; an isolated sandbox is recorded as such.
    store.create_task(new_task("no payload")).await.unwrap();
    let c2 = claim(store, "worker-8").await;
    assert_eq!(c2.model_payload, None);
    let ev = store.list_events(&c2.attempt.id, 0, 1).await.unwrap();
    assert_eq!(ev.len(), 1);
    match &ev[0].kind {
        EventKind::Claimed {
            worker,
            sandbox,
            isolated,
            ..
        } => {
            assert_eq!(worker, "worker-8");
            assert_eq!(sandbox, "bubblewrap");
            assert!(*isolated);
        }
        other => panic!("first event must be `claimed`, got {other:?}"),
    }
}

/// Many concurrent claimers drain the queue: every attempt is claimed exactly once.
pub async fn concurrent_claimers_never_share(store: &dyn Store) {
    let mut expected = BTreeSet::new();
    for i in 0..24 {
        let t = store
            .create_task(new_task_with_attempts(&format!("task {i}"), 1 + i % 2))
            .await
            .unwrap();
        expected.extend(t.attempts.iter().map(|a| a.id.clone()));
    }
    assert_eq!(expected.len(), 36);

    let drain = |worker: String| async move {
        let mut got = Vec::new();
        while let Some(c) = store.claim_attempt(&claim_req(&worker)).await.unwrap() {
            assert_eq!(c.attempt.active_worker.as_deref(), Some(worker.as_str()));
            got.push(c.attempt.id);
        }
        (worker, got)
    };
    let results = join_all((0..8).map(|i| drain(format!("w{i}"))).collect()).await;

    let mut seen = BTreeSet::new();
    let mut total = 0;
    for (worker, ids) in &results {
        for id in ids {
            total += 1;
            assert!(seen.insert(id.clone()), "attempt {id} claimed twice");
            let a = store.get_attempt(id).await.unwrap();
            assert_eq!(a.active_worker.as_deref(), Some(worker.as_str()));
            assert_eq!(a.runs, 1);
            assert_eq!(a.last_seq, 2, "one claimed + one status event");
        }
    }
    assert_eq!(total, 36);
    assert_eq!(seen, expected);
    assert!(
        store
            .claim_attempt(&claim_req("late"))
            .await
            .unwrap()
            .is_none()
    );

    // A burst of single claims racing for one attempt: exactly one wins.
    let t = store.create_task(new_task("contended")).await.unwrap();
    let results = join_all(
        (0..10)
            .map(|i| async move { store.claim_attempt(&claim_req(&format!("r{i}"))).await })
            .collect(),
    )
    .await;
    let winners: Vec<ClaimedAttempt> = results.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(winners.len(), 1);
    assert_eq!(winners[0].attempt.id, t.attempts[0].id);
    assert_eq!(
        store.get_attempt(&t.attempts[0].id).await.unwrap().last_seq,
        2
    );
}

// ---------------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------------

/// transition is a compare-and-set for the lease holder that appends a status event.
pub async fn transition_compare_and_set(store: &dyn Store) {
    let t = store.create_task(new_task("cas")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();

    // Wrong `from`: Conflict, reporting the actual status; nothing written.
    match store
        .transition(&aid, "w1", Status::Running, Status::Checking, None)
        .await
    {
        Err(StoreError::Conflict {
            attempt, actual, ..
        }) => {
            assert_eq!(attempt, aid);
            assert_eq!(actual, Status::Preparing);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Wrong worker: LeaseLost; nothing written.
    let r = store
        .transition(&aid, "w2", Status::Preparing, Status::Running, None)
        .await;
    assert!(
        matches!(r, Err(StoreError::LeaseLost(ref a)) if a == &aid),
        "{r:?}"
    );
    // Disallowed by the state machine: Invalid.
    for (from, to) in [
        (Status::Preparing, Status::Done),
        (Status::Preparing, Status::Preparing),
        (Status::Preparing, Status::Verifying),
        (Status::Done, Status::Running),
    ] {
        let r = store.transition(&aid, "w1", from, to, None).await;
        assert!(
            matches!(r, Err(StoreError::Invalid(_))),
            "{from} → {to}: {r:?}"
        );
    }
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Preparing);
    assert_eq!(a.last_seq, 2, "failed transitions must not append events");
    assert_eq!(a.active_worker.as_deref(), Some("w1"));

    // Unknown attempt.
    let r = store
        .transition(&new_id(), "w1", Status::Preparing, Status::Running, None)
        .await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");

    // The real path: each step appends one status event and the task follows.
    let steps = [
        (Status::Preparing, Status::Running, None),
        (
            Status::Running,
            Status::Checking,
            Some("agent finished".to_string()),
        ),
        (
            Status::Checking,
            Status::Running,
            Some("checks failed".to_string()),
        ),
        (Status::Running, Status::Checking, None),
        (Status::Checking, Status::Verifying, None),
    ];
    for (i, (from, to, reason)) in steps.iter().enumerate() {
        store
            .transition(&aid, "w1", *from, *to, reason.clone())
            .await
            .unwrap();
        let a = store.get_attempt(&aid).await.unwrap();
        assert_eq!(a.status, *to);
        assert_eq!(a.last_seq, 3 + i as i64);
        assert_eq!(store.get_task(&t.id).await.unwrap().status, *to);
        let last = store.list_events(&aid, a.last_seq - 1, 10).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(
            last[0].kind,
            EventKind::Status {
                from: *from,
                to: *to,
                reason: reason.clone(),
            }
        );
        assert_eq!(last[0].run, 1);
    }

    // Replaying a step that already happened is a Conflict, not a second event.
    let r = store
        .transition(&aid, "w1", Status::Checking, Status::Verifying, None)
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::Conflict {
                actual: Status::Verifying,
                ..
            })
        ),
        "{r:?}"
    );
    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    assert_eq!(events.len(), 2 + steps.len());
}

/// With several attempts, the task shows the furthest-along live attempt, then the result.
pub async fn task_status_is_derived_from_attempts(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("best of two", 2))
        .await
        .unwrap();
    let c1 = claim(store, "w1").await;
    assert_eq!(c1.task.status, Status::Preparing);
    let c2 = claim(store, "w2").await;
    assert_ne!(c1.attempt.id, c2.attempt.id);
    let status = || async { store.get_task(&t.id).await.unwrap().status };

    store
        .transition(
            &c1.attempt.id,
            "w1",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status().await, Status::Running);
    store
        .transition(
            &c2.attempt.id,
            "w2",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    store
        .transition(
            &c2.attempt.id,
            "w2",
            Status::Running,
            Status::Checking,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status().await, Status::Checking);

    // One fails: the other is still live, so the task is not failed and shows no error.
    let s = store
        .finish_attempt(
            &c2.attempt.id,
            "w2",
            AttemptOutcome {
                status: Some(Status::Failed),
                error: Some("checks failed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Failed);
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Running);
    assert_eq!(task.error, None);

    // The other succeeds: done wins over failed, and the failure's error is not the task's.
    store
        .finish_attempt(
            &c1.attempt.id,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Done);
    assert_eq!(task.error, None);
    let by_id: BTreeMap<_, _> = task.attempts.iter().map(|a| (a.id.clone(), a)).collect();
    assert_eq!(by_id[&c1.attempt.id].status, Status::Done);
    assert_eq!(by_id[&c2.attempt.id].status, Status::Failed);
    assert_eq!(
        by_id[&c2.attempt.id].error.as_deref(),
        Some("checks failed")
    );
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Many concurrent appenders (batches of 1–3 events) never produce a gap or a duplicate seq,
/// and a batch is stored contiguously and in order.
pub async fn append_events_contiguous_under_concurrency(store: &dyn Store) {
    const TASKS: usize = 8;
    const APPENDS: usize = 50;
    let mut attempts = Vec::new();
    for i in 0..TASKS {
        store
            .create_task(new_task(&format!("task {i}")))
            .await
            .unwrap();
    }
    for _ in 0..TASKS {
        attempts.push(claim(store, "w").await.attempt.id);
    }

    let mut futs = Vec::new();
    for (t, aid) in attempts.iter().enumerate() {
        for k in 0..APPENDS {
            let aid = aid.clone();
            futs.push(async move {
                let n = 1 + k % 3;
                let batch: Vec<EventKind> =
                    (0..n).map(|j| notice(format!("{t}/{k}/{j}"))).collect();
                // Half fenced by the holder, half unfenced: both must serialize.
                let owner = if k % 2 == 0 { Some("w") } else { None };
                let last = store.append_events(&aid, owner, batch).await.unwrap();
                (t, k, n as i64, last)
            });
        }
    }
    let results = join_all(futs).await;

    for (t, aid) in attempts.iter().enumerate() {
        let events = all_events(store, aid).await;
        assert_contiguous(aid, &events);
        let appended: i64 = (0..APPENDS).map(|k| 1 + (k % 3) as i64).sum();
        assert_eq!(events.len() as i64, 2 + appended);
        assert_eq!(store.get_attempt(aid).await.unwrap().last_seq, 2 + appended);
        assert!(events.iter().all(|e| e.run == 1));

        // Each append's returned seq points at its own batch, in order.
        let mut covered = BTreeSet::new();
        for (rt, k, n, last) in results.iter().filter(|r| r.0 == t) {
            for j in 0..*n {
                let seq = last - n + 1 + j;
                assert!(covered.insert(seq), "seq {seq} returned twice");
                assert_eq!(
                    events[(seq - 1) as usize].kind,
                    notice(format!("{rt}/{k}/{j}"))
                );
            }
        }
        assert_eq!(covered, (3..=2 + appended).collect::<BTreeSet<_>>());
    }
}

/// Fenced appends only succeed for the lease holder; unfenced ones always do.
pub async fn append_events_fencing(store: &dyn Store) {
    let queued = store.create_task(new_task("queued")).await.unwrap();
    tick().await;
    let t = store.create_task(new_task("claimed")).await.unwrap();
    let queued_id = queued.attempts[0].id.clone();
    // Claim the oldest (`queued`'s attempt) and put it back, so that it is a queued attempt
    // with a history but no lease; then claim `t`'s.
    let first = claim(store, "w1").await;
    assert_eq!(first.attempt.id, queued_id);
    assert_eq!(
        store.requeue_orphans("test setup").await.unwrap(),
        vec![queued_id.clone()]
    );
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    assert_eq!(aid, t.attempts[0].id);
    assert_eq!(c.attempt.last_seq, 2);

    // Not the holder: LeaseLost, and nothing written.
    let r = store
        .append_events(&aid, Some("w2"), vec![notice("intruder"), notice("again")])
        .await;
    assert!(
        matches!(r, Err(StoreError::LeaseLost(ref a)) if a == &aid),
        "{r:?}"
    );
    assert_eq!(store.get_attempt(&aid).await.unwrap().last_seq, 2);
    assert_eq!(all_events(store, &aid).await.len(), 2);

    // The holder, then an unfenced writer (the server), interleave.
    assert_eq!(
        store
            .append_events(&aid, Some("w1"), vec![notice("mine")])
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .append_events(&aid, None, vec![notice("server note")])
            .await
            .unwrap(),
        4
    );
    // An empty batch writes nothing and reports the current last seq.
    assert_eq!(
        store.append_events(&aid, Some("w1"), vec![]).await.unwrap(),
        4
    );

    // A queued attempt has no lease: fenced appends fail, unfenced ones work.
    let before = store.get_attempt(&queued_id).await.unwrap().last_seq;
    let r = store
        .append_events(&queued_id, Some("w1"), vec![notice("stale")])
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost(_))), "{r:?}");
    assert_eq!(
        store
            .append_events(&queued_id, None, vec![notice("ok")])
            .await
            .unwrap(),
        before + 1
    );

    // Unknown attempt: NotFound either way, even for an empty batch.
    assert!(matches!(
        store.append_events(&new_id(), None, vec![]).await,
        Err(StoreError::NotFound(_))
    ));
    for owner in [None, Some("w1")] {
        let r = store
            .append_events(&new_id(), owner, vec![notice("lost")])
            .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }

    // Every kind of event round-trips.
    let kinds = vec![
        EventKind::ModelTurn {
            model: "scripted".into(),
            scripted: true,
            turn: 1,
            text: Some("Looking around.".into()),
            reasoning: None,
            usage: Usage {
                input_tokens: 10,
                cached_input_tokens: 2,
                output_tokens: 5,
                reasoning_tokens: 1,
                cost_usd: 0.25,
                ..Default::default()
            },
            stop_reason: Some("tool_use".into()),
            total_cost_usd: 0.25,
        },
        EventKind::ToolCall {
            call_id: "c1".into(),
            name: "shell".into(),
            arguments: serde_json::json!({"command": "ls -la", "nested": {"n": [1, 2]}}),
        },
        EventKind::CommandStarted {
            call_id: Some("c1".into()),
            command: "ls -la".into(),
            workdir: "/work".into(),
        },
        EventKind::Output {
            call_id: Some("c1".into()),
            stream: OutputStream::Stderr,
            data: "line one\nünïcödé \u{1F980}\n\0nul".into(),
        },
        EventKind::CommandFinished {
            call_id: Some("c1".into()),
            exit_code: Some(2),
            signal: None,
            duration_ms: 17,
            killed_by: Some("timeout".into()),
        },
        EventKind::ToolResult {
            call_id: "c1".into(),
            name: "shell".into(),
            ok: false,
            output: "x".repeat(100_000),
            truncated: true,
        },
        EventKind::FileChange {
            path: "src/lib.rs".into(),
            change: "modified".into(),
        },
        EventKind::CheckResult {
            name: "tests".into(),
            command: "cargo test".into(),
            exit_code: Some(0),
            duration_ms: 1234,
            passed: true,
            tests: Some(TestCounts {
                passed: 41,
                failed: 0,
                skipped: 2,
                source: "cargo".into(),
            }),
        },
        EventKind::Committed {
            branch: "errand/x-1".into(),
            commit: "abc".into(),
            files_changed: 1,
            insertions: 2,
            deletions: 3,
        },
        EventKind::Error {
            message: "boom".into(),
        },
    ];
    let last = store
        .append_events(&aid, Some("w1"), kinds.clone())
        .await
        .unwrap();
    assert_eq!(last, 4 + kinds.len() as i64);
    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    let stored: Vec<EventKind> = events[4..].iter().map(|e| e.kind.clone()).collect();
    assert_eq!(stored, kinds);
    assert_eq!(events[2].kind, notice("mine"));
    assert_eq!(events[3].kind, notice("server note"));
}

/// list_events(after, limit) pages through the log in order.
pub async fn list_events_paging(store: &dyn Store) {
    let t = store.create_task(new_task("log")).await.unwrap();
    let aid = t.attempts[0].id.clone();
    for chunk in 0..6 {
        let batch = (0..5)
            .map(|j| notice(format!("e{}", chunk * 5 + j + 1)))
            .collect();
        store.append_events(&aid, None, batch).await.unwrap();
    }
    let seqs = |evs: &[Event]| evs.iter().map(|e| e.seq).collect::<Vec<_>>();

    let p1 = store.list_events(&aid, 0, 10).await.unwrap();
    assert_eq!(seqs(&p1), (1..=10).collect::<Vec<_>>());
    let p2 = store.list_events(&aid, 10, 10).await.unwrap();
    assert_eq!(seqs(&p2), (11..=20).collect::<Vec<_>>());
    let tail = store.list_events(&aid, 25, 100).await.unwrap();
    assert_eq!(seqs(&tail), (26..=30).collect::<Vec<_>>());
    assert!(store.list_events(&aid, 30, 10).await.unwrap().is_empty());
    assert!(store.list_events(&aid, 1000, 10).await.unwrap().is_empty());
    let one = store.list_events(&aid, 7, 1).await.unwrap();
    assert_eq!(seqs(&one), vec![8]);
    assert_eq!(one[0].kind, notice("e8"));
    // Events of other attempts never leak in.
    let other = store.create_task(new_task("other")).await.unwrap();
    store
        .append_events(&other.attempts[0].id, None, vec![notice("other")])
        .await
        .unwrap();
    let all = all_events(store, &aid).await;
    assert_contiguous(&aid, &all);
    assert_eq!(all.len(), 30);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.kind, notice(format!("e{}", i + 1)));
    }
}

// ---------------------------------------------------------------------------------------------
// Leases, cancellation and outcomes
// ---------------------------------------------------------------------------------------------

/// heartbeat: Held for the holder, Lost for anyone else, Cancelled once the task is
/// cancelled; the holder can still write its final events and its finish keeps `cancelled`.
pub async fn heartbeat_and_cancel_running(store: &dyn Store) {
    let t = store.create_task(new_task("cancel me")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();

    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Held
    );
    assert_eq!(
        store.heartbeat(&aid, "w2", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    assert!(matches!(
        store.heartbeat(&new_id(), "w1", 60_000).await,
        Err(StoreError::NotFound(_))
    ));
    // Someone else's heartbeat did not steal the lease.
    assert_eq!(
        store
            .get_attempt(&aid)
            .await
            .unwrap()
            .active_worker
            .as_deref(),
        Some("w1")
    );

    // Cancel by short id.
    let task = store.cancel_task(&t.short_id, "user asked").await.unwrap();
    assert_eq!(task.id, t.id);
    assert_eq!(task.status, Status::Cancelled);
    assert_eq!(task.attempts[0].status, Status::Cancelled);
    assert!(task.attempts[0].finished_at_ms.is_some());

    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Cancelled
    );
    assert_eq!(
        store.heartbeat(&aid, "w2", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    let events = all_events(store, &aid).await;
    assert_eq!(
        status_events(&events).last(),
        Some(&(
            Status::Running,
            Status::Cancelled,
            Some("user asked".into())
        ))
    );

    // A cancelled attempt is not requeued by the reaper.
    assert!(store.requeue_expired(now_ms()).await.unwrap().is_empty());

    // The worker's next transition loses the race; its final events still go in.
    let r = store
        .transition(&aid, "w1", Status::Running, Status::Checking, None)
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::Conflict {
                actual: Status::Cancelled,
                ..
            })
        ),
        "{r:?}"
    );
    let last = store
        .append_events(&aid, Some("w1"), vec![notice("stopping: cancelled")])
        .await
        .unwrap();
    assert_eq!(last, events.len() as i64 + 1);
    // Not for anyone else.
    assert!(matches!(
        store
            .append_events(&aid, Some("w2"), vec![notice("x")])
            .await,
        Err(StoreError::LeaseLost(_))
    ));

    // Finishing keeps `cancelled` whatever the worker reports, and releases the lease.
    let s = store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                summary: Some("partial work".into()),
                turns: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Cancelled);
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Cancelled);
    assert_eq!(a.active_worker, None);
    assert_eq!(a.error, None);
    assert_eq!(a.last_seq, last, "no second status event");
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Cancelled);
    assert_eq!(
        status_events(&all_events(store, &aid).await)
            .iter()
            .filter(|(_, to, _)| *to == Status::Cancelled)
            .count(),
        1
    );

    // After finishing, the lease is gone.
    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    assert!(matches!(
        store
            .append_events(&aid, Some("w1"), vec![notice("late")])
            .await,
        Err(StoreError::LeaseLost(_))
    ));

    // Cancelling again is a no-op.
    let again = store.cancel_task(&t.id, "twice").await.unwrap();
    assert_eq!(again.status, Status::Cancelled);
    assert_eq!(store.get_attempt(&aid).await.unwrap().last_seq, last);
}

/// Cancelling a queued task cancels its attempts; nothing is left to claim.
pub async fn cancel_queued_task(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("never mind", 2))
        .await
        .unwrap();
    let task = store.cancel_task(&t.id, "changed my mind").await.unwrap();
    assert_eq!(task.status, Status::Cancelled);
    assert_eq!(task.error, None);
    for a in &task.attempts {
        assert_eq!(a.status, Status::Cancelled);
        assert!(a.finished_at_ms.is_some());
        assert_eq!(a.active_worker, None);
        let events = all_events(store, &a.id).await;
        assert_contiguous(&a.id, &events);
        assert_eq!(
            status_events(&events),
            vec![(
                Status::Queued,
                Status::Cancelled,
                Some("changed my mind".into())
            )]
        );
    }
    assert_eq!(store.get_task(&t.id).await.unwrap(), task);
    assert!(
        store
            .claim_attempt(&claim_req("w1"))
            .await
            .unwrap()
            .is_none()
    );

    // Idempotent: no new events.
    let again = store.cancel_task(&t.id, "again").await.unwrap();
    assert_eq!(again.status, Status::Cancelled);
    for a in &again.attempts {
        assert_eq!(a.last_seq, 1);
    }

    // Unknown and malformed ids.
    match store.cancel_task(&new_id(), "x").await {
        Err(StoreError::NotFound(msg)) => assert!(msg.contains("errand ls"), "{msg}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        store.cancel_task("NOT-AN-ID", "x").await,
        Err(StoreError::NotFound(_))
    ));

    // A finished task stays as it was.
    store.create_task(new_task("done already")).await.unwrap();
    let c = claim(store, "w1").await;
    store
        .transition(
            &c.attempt.id,
            "w1",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    store
        .finish_attempt(
            &c.attempt.id,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let before = store.get_attempt(&c.attempt.id).await.unwrap();
    let after = store.cancel_task(&c.task.id, "too late").await.unwrap();
    assert_eq!(after.status, Status::Done);
    assert_eq!(after.attempts[0], before);
}

/// finish_attempt stores the outcome and releases the lease.
pub async fn finish_attempt_done(store: &dyn Store) {
    let t = store.create_task(new_task("succeed")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    let diff = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n".to_string();
    let stats = DiffStats {
        files_changed: 2,
        insertions: 3,
        deletions: 1,
        files: vec![
            FileStat {
                path: "x".into(),
                insertions: Some(3),
                deletions: Some(1),
            },
            FileStat {
                path: "logo.png".into(),
                insertions: None,
                deletions: None,
            },
        ],
    };
    let checks = vec![
        CheckResult {
            name: "tests".into(),
            command: "cargo test".into(),
            exit_code: Some(0),
            duration_ms: 1500,
            passed: true,
            tests: Some(TestCounts {
                passed: 12,
                failed: 0,
                skipped: 1,
                source: "junit".into(),
            }),
        },
        CheckResult {
            name: "lint".into(),
            command: "cargo clippy".into(),
            exit_code: None,
            duration_ms: 30_000,
            passed: false,
            tests: None,
        },
    ];
    let usage = Usage {
        input_tokens: 1000,
        cached_input_tokens: 200,
        output_tokens: 300,
        reasoning_tokens: 50,
        cost_usd: 1.5,
        ..Default::default()
    };
    let s = store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                head_commit: Some("feedface".into()),
                diff: Some(diff.clone()),
                diff_stats: Some(stats.clone()),
                usage,
                turns: 7,
                checks: checks.clone(),
                summary: Some("Fixed it.".into()),
                // Ignored for a successful attempt.
                error: Some("stale error".into()),
                conversation: None,
                delivery: Some(errand_core::Delivery {
                    remote: "https://git.example.com/acme/shop.git".into(),
                    pushed_commit: Some("feedface".into()),
                    push: Some("created".into()),
                    ..Default::default()
                }),
                review: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Done);

    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Done);
    assert_eq!(
        a.delivery.as_ref().and_then(|d| d.push.as_deref()),
        Some("created")
    );
    let later = errand_core::Delivery {
        pr_url: Some("https://git.example.com/acme/shop/pull/3".into()),
        ..a.delivery.clone().unwrap_or_default()
    };
    store.set_delivery(&aid, &later).await.unwrap();
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.delivery, Some(later));
    assert_eq!(a.head_commit.as_deref(), Some("feedface"));
    assert_eq!(a.diff_stats, Some(stats));
    assert_eq!(a.checks, checks);
    assert_eq!(a.summary.as_deref(), Some("Fixed it."));
    assert_eq!(a.usage, usage);
    assert_eq!(a.turns, 7);
    assert_eq!(a.error, None);
    assert_eq!(a.active_worker, None, "the lease is released");
    assert_eq!(a.worker.as_deref(), Some("w1"), "who ran it is kept");
    assert!(a.finished_at_ms.is_some());
    assert_eq!(store.get_diff(&aid).await.unwrap(), Some(diff));
    assert!(matches!(
        store.get_diff(&new_id()).await,
        Err(StoreError::NotFound(_))
    ));

    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Done);
    assert_eq!(task.error, None);
    assert_eq!(task.attempts[0], a);

    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    assert_eq!(
        status_events(&events).last().map(|(f, t, _)| (*f, *t)),
        Some((Status::Running, Status::Done))
    );
    assert_eq!(a.last_seq, events.len() as i64);

    // The lease is gone: no more writes, heartbeats or finishes from that worker.
    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    assert!(matches!(
        store
            .append_events(&aid, Some("w1"), vec![notice("late")])
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .finish_attempt(&aid, "w1", AttemptOutcome::default())
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(store.get_attempt(&aid).await.unwrap(), a);
}

/// A failed attempt stores its error on the attempt and on the task; a worker that does not
/// hold the lease cannot finish it.
pub async fn finish_attempt_failed(store: &dyn Store) {
    let t = store.create_task(new_task("fail")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();

    let r = store
        .finish_attempt(
            &aid,
            "w2",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(r, Err(StoreError::LeaseLost(_))), "{r:?}");
    assert_eq!(
        store.get_attempt(&aid).await.unwrap().status,
        Status::Preparing
    );

    let s = store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Failed),
                error: Some("sandbox could not start".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Failed);
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Failed);
    assert_eq!(a.error.as_deref(), Some("sandbox could not start"));
    assert_eq!(a.active_worker, None);
    assert!(a.finished_at_ms.is_some());
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Failed);
    assert_eq!(task.error.as_deref(), Some("sandbox could not start"));
    let events = all_events(store, &aid).await;
    assert_eq!(
        status_events(&events).last(),
        Some(&(
            Status::Preparing,
            Status::Failed,
            Some("sandbox could not start".into())
        ))
    );

    // No status in the outcome means failed.
    let t2 = store.create_task(new_task("no status")).await.unwrap();
    let c2 = claim(store, "w1").await;
    assert_eq!(c2.task.id, t2.id);
    let s = store
        .finish_attempt(
            &c2.attempt.id,
            "w1",
            AttemptOutcome {
                error: Some("worker gave up".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Failed);
    let task = store.get_task(&t2.id).await.unwrap();
    assert_eq!(task.status, Status::Failed);
    assert_eq!(task.error.as_deref(), Some("worker gave up"));
}

/// update_usage is visible through get_attempt and get_task, and only for the lease holder.
pub async fn update_usage_is_visible(store: &dyn Store) {
    let t = store.create_task(new_task("usage")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    let u1 = Usage {
        input_tokens: 100,
        cached_input_tokens: 10,
        output_tokens: 20,
        reasoning_tokens: 5,
        cost_usd: 0.125,
        ..Default::default()
    };
    store.update_usage(&aid, "w1", u1, 1).await.unwrap();
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.usage, u1);
    assert_eq!(a.turns, 1);

    let mut u2 = u1;
    u2.add(&u1);
    store.update_usage(&aid, "w1", u2, 2).await.unwrap();
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.usage, u2);
    assert_eq!(a.turns, 2);
    assert_eq!(store.get_task(&t.id).await.unwrap().attempts[0].usage, u2);

    // Another worker's update (an error or a silent no-op) must not change anything.
    let bogus = Usage {
        input_tokens: 999_999,
        ..Default::default()
    };
    let r = store.update_usage(&aid, "w2", bogus, 99).await;
    assert!(matches!(r, Ok(()) | Err(StoreError::LeaseLost(_))), "{r:?}");
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.usage, u2);
    assert_eq!(a.turns, 2);
}

/// The setup phase's record: written by the lease holder, visible on the attempt and the task,
/// replaced by a later write, refused for anyone else, and kept after the attempt ends.
pub async fn set_setup_is_visible_and_fenced(store: &dyn Store) {
    let t = store.create_task(new_task("setup")).await.unwrap();
    assert!(t.attempts[0].setup.is_none(), "no setup before a run");
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    let miss = SetupInfo {
        cache: "miss".into(),
        key: "0123456789ab".into(),
        duration_ms: 1234,
        maintenance_ran: false,
        bytes: 4096,
        failed: false,
    };
    store.set_setup(&aid, "w1", &miss).await.unwrap();
    assert_eq!(
        store.get_attempt(&aid).await.unwrap().setup,
        Some(miss.clone())
    );
    let hit = SetupInfo {
        cache: "hit".into(),
        maintenance_ran: true,
        ..miss.clone()
    };
    store.set_setup(&aid, "w1", &hit).await.unwrap();
    assert_eq!(
        store.get_task(&t.id).await.unwrap().attempts[0].setup,
        Some(hit.clone())
    );
    let r = store.set_setup(&aid, "w2", &miss).await;
    assert!(matches!(r, Err(StoreError::LeaseLost(_))), "{r:?}");
    assert_eq!(
        store.get_attempt(&aid).await.unwrap().setup,
        Some(hit.clone())
    );
    let r = store.set_setup("no-such-attempt", "w1", &miss).await;
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_attempt(&aid).await.unwrap().setup, Some(hit));
    // Once the lease is released nobody can write it.
    let r = store.set_setup(&aid, "w1", &miss).await;
    assert!(matches!(r, Err(StoreError::LeaseLost(_))), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Requeueing
// ---------------------------------------------------------------------------------------------

/// An expired lease puts the attempt back in the queue; the next claim is run 2, which says
/// it starts over; seqs continue without gaps and every event carries its run.
pub async fn requeue_expired_restarts_run(store: &dyn Store) {
    let t = store.create_task(new_task("flaky worker")).await.unwrap();
    let aid = t.attempts[0].id.clone();
    let c = store
        .claim_attempt(&claim_req_ttl("w1", 1))
        .await
        .unwrap()
        .expect("work");
    assert_eq!(c.attempt.id, aid);
    // The lease has expired but nobody noticed yet: the holder can still work.
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .append_events(&aid, Some("w1"), vec![notice("run 1 working")])
        .await
        .unwrap();
    let run1_last = store.get_attempt(&aid).await.unwrap().last_seq;

    // A second attempt with a healthy lease must survive the sweep.
    let healthy = store.create_task(new_task("healthy")).await.unwrap();
    let hc = claim(store, "w9").await;
    assert_eq!(hc.task.id, healthy.id);

    tokio::time::sleep(Duration::from_millis(20)).await;
    let requeued = store.requeue_expired(now_ms()).await.unwrap();
    assert_eq!(requeued, vec![aid.clone()]);

    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Queued);
    assert_eq!(a.active_worker, None);
    assert_eq!(a.runs, 1);
    let why = a.restart_reason.clone().expect("a restart reason");
    assert!(why.contains("lease"), "{why}");
    assert_eq!(a.last_seq, run1_last + 1);
    assert_eq!(store.get_task(&t.id).await.unwrap().status, Status::Queued);
    let events = all_events(store, &aid).await;
    let (from, to, reason) = status_events(&events).last().cloned().unwrap();
    assert_eq!((from, to), (Status::Running, Status::Queued));
    assert!(reason.is_some_and(|r| r.contains("lease")));
    let healthy_attempt = store.get_attempt(&hc.attempt.id).await.unwrap();
    assert_eq!(healthy_attempt.status, Status::Preparing);
    assert_eq!(healthy_attempt.active_worker.as_deref(), Some("w9"));

    // A second sweep finds nothing.
    assert!(store.requeue_expired(now_ms()).await.unwrap().is_empty());

    // The old worker is fenced out everywhere.
    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    assert!(matches!(
        store
            .append_events(&aid, Some("w1"), vec![notice("zombie")])
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .transition(&aid, "w1", Status::Running, Status::Checking, None)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .update_usage(
                &aid,
                "w1",
                Usage {
                    input_tokens: 5,
                    ..Default::default()
                },
                9
            )
            .await,
        Ok(()) | Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(store.get_attempt(&aid).await.unwrap().turns, 0);
    assert!(matches!(
        store
            .finish_attempt(
                &aid,
                "w1",
                AttemptOutcome {
                    status: Some(Status::Done),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(
        store.get_attempt(&aid).await.unwrap().last_seq,
        run1_last + 1
    );

    // Run 2.
    let c2 = claim(store, "w2").await;
    assert_eq!(c2.attempt.id, aid);
    assert_eq!(c2.run, 2);
    assert_eq!(c2.attempt.runs, 2);
    assert_eq!(c2.attempt.status, Status::Preparing);
    assert_eq!(c2.attempt.active_worker.as_deref(), Some("w2"));
    assert_eq!(c2.attempt.worker.as_deref(), Some("w2"));
    let claimed = store.list_events(&aid, run1_last + 1, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    match &claimed[0].kind {
        EventKind::Claimed {
            worker,
            resumed_from,
            note,
            ..
        } => {
            assert_eq!(worker, "w2");
            assert_eq!(resumed_from, "start");
            let note = note.clone().expect("run 2 explains itself");
            assert!(note.contains("starts over"), "{note}");
        }
        other => panic!("first event of run 2 must be `claimed`, got {other:?}"),
    }
    assert_eq!(
        claimed[1].kind,
        EventKind::Status {
            from: Status::Queued,
            to: Status::Preparing,
            reason: None
        }
    );
    store
        .append_events(&aid, Some("w2"), vec![notice("run 2 working")])
        .await
        .unwrap();
    store
        .transition(&aid, "w2", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .finish_attempt(
            &aid,
            "w2",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // The whole log: contiguous; run 1 up to and including the requeue, run 2 from its
    // `claimed` event on.
    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    let run2_start = (run1_last + 2) as usize; // seq of run 2's `claimed`
    for e in &events {
        let expected = if (e.seq as usize) < run2_start { 1 } else { 2 };
        assert_eq!(e.run, expected, "event {e:?}");
    }
    let claimed_seqs: Vec<i64> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Claimed { .. }))
        .map(|e| e.seq)
        .collect();
    assert_eq!(claimed_seqs, vec![1, run2_start as i64]);
    assert_eq!(store.get_task(&t.id).await.unwrap().status, Status::Done);
}

/// requeue_orphans puts every active attempt (and only those) back in the queue.
pub async fn requeue_orphans_requeues_all_active(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .create_task(new_task(&format!("task {i}")))
                .await
                .unwrap()
                .attempts[0]
                .id
                .clone(),
        );
        tick().await;
    }
    // ids[0]: preparing; ids[1]: running; ids[2]: done; ids[3]: cancelled; ids[4]: queued.
    let mut claimed = Vec::new();
    for w in ["w0", "w1", "w2", "w3"] {
        claimed.push(claim(store, w).await);
    }
    store
        .transition(&ids[1], "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .finish_attempt(
            &ids[2],
            "w2",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .cancel_task(&claimed[3].task.id, "stop")
        .await
        .unwrap();
    let untouched: Vec<_> = join_all(
        [&ids[2], &ids[3], &ids[4]]
            .into_iter()
            .map(|id| store.get_attempt(id))
            .collect(),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();

    let mut requeued = store.requeue_orphans("the server restarted").await.unwrap();
    requeued.sort();
    let mut expected = vec![ids[0].clone(), ids[1].clone()];
    expected.sort();
    assert_eq!(requeued, expected);

    for (id, from) in [(&ids[0], Status::Preparing), (&ids[1], Status::Running)] {
        let a = store.get_attempt(id).await.unwrap();
        assert_eq!(a.status, Status::Queued);
        assert_eq!(a.active_worker, None);
        let why = a.restart_reason.clone().unwrap();
        assert!(why.contains("the server restarted"), "{why}");
        let events = all_events(store, id).await;
        assert_contiguous(id, &events);
        let (f, to, reason) = status_events(&events).last().cloned().unwrap();
        assert_eq!((f, to), (from, Status::Queued));
        assert!(reason.unwrap().contains("the server restarted"));
        assert_eq!(
            store.get_task(&a.task_id).await.unwrap().status,
            Status::Queued
        );
    }
    for before in &untouched {
        // Ended attempts are only released (their worker is gone); queued ones are unchanged.
        let mut expected = before.clone();
        if expected.status.is_terminal() {
            expected.active_worker = None;
        }
        assert_eq!(store.get_attempt(&before.id).await.unwrap(), expected);
    }
    assert!(store.requeue_orphans("again").await.unwrap().is_empty());

    // They are claimable again, as run 2, in queue order behind the one that never ran.
    let mut reclaimed = BTreeMap::new();
    for _ in 0..3 {
        let c = claim(store, "w5").await;
        reclaimed.insert(c.attempt.id.clone(), c.run);
    }
    assert_eq!(reclaimed.get(&ids[0]), Some(&2));
    assert_eq!(reclaimed.get(&ids[1]), Some(&2));
    assert_eq!(reclaimed.get(&ids[4]), Some(&1));
    assert!(
        store
            .claim_attempt(&claim_req("w5"))
            .await
            .unwrap()
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------------
// Durability and notifications
// ---------------------------------------------------------------------------------------------

/// What [`durability_write`] left behind, for [`durability_check`] after a reopen.
pub struct DurableState {
    pub task: Task,
    pub events: BTreeMap<String, Vec<Event>>,
    pub queued_attempt: String,
}

/// Writes a task with some history. Drop the store after this, reopen it, and call
/// [`durability_check`].
pub async fn durability_write(store: &dyn Store) -> DurableState {
    let t = store
        .create_task(new_task_with_attempts("survive a restart", 2))
        .await
        .unwrap();
    let c = claim(store, "w1").await;
    store
        .transition(
            &c.attempt.id,
            "w1",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    store
        .append_events(
            &c.attempt.id,
            Some("w1"),
            vec![notice("one"), notice("two")],
        )
        .await
        .unwrap();
    store
        .finish_attempt(
            &c.attempt.id,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                diff: Some("+durable\n".into()),
                summary: Some("kept".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let task = store.get_task(&t.id).await.unwrap();
    let mut events = BTreeMap::new();
    for a in &task.attempts {
        events.insert(a.id.clone(), all_events(store, &a.id).await);
    }
    let queued_attempt = task
        .attempts
        .iter()
        .find(|a| a.status == Status::Queued)
        .unwrap()
        .id
        .clone();
    assert_eq!(events[&c.attempt.id].len(), 6);
    DurableState {
        task,
        events,
        queued_attempt,
    }
}

/// After a reopen, everything written by [`durability_write`] is there and the queue works.
pub async fn durability_check(store: &dyn Store, state: &DurableState) {
    assert_eq!(store.get_task(&state.task.id).await.unwrap(), state.task);
    for (aid, events) in &state.events {
        assert_eq!(&all_events(store, aid).await, events);
    }
    let done = state
        .task
        .attempts
        .iter()
        .find(|a| a.status == Status::Done)
        .unwrap();
    assert_eq!(
        store.get_diff(&done.id).await.unwrap().as_deref(),
        Some("+durable\n")
    );
    let c = claim(store, "w2").await;
    assert_eq!(c.attempt.id, state.queued_attempt);
    assert_eq!(c.run, 1);
    assert_eq!(c.attempt.last_seq, 2);
}

/// The notifier wakes workers on new work and streams on new events.
pub async fn notifier_wakes_on_work_and_events(store: &dyn Store) {
    let waited = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), store.notifier().wait_for_work()),
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            store.create_task(new_task("wake up")).await.unwrap()
        }
    );
    assert!(waited.0.is_ok(), "create_task did not wake the worker");
    let t = waited.1;
    let aid = t.attempts[0].id.clone();

    let mut rx = store.notifier().subscribe_events();
    store
        .append_events(&aid, None, vec![notice("hello")])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event notification")
        .unwrap();
    assert_eq!(got, aid);

    // A claim notifies too (its events are the first of the run).
    let c = claim(store, "w1").await;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a claim notification")
        .unwrap();
    assert_eq!(got, c.attempt.id);
}

/// Extreme lease lengths neither fail nor wrap around into an already-expired lease.
pub async fn lease_ttl_extremes(store: &dyn Store) {
    store.create_task(new_task("forever")).await.unwrap();
    let c = store
        .claim_attempt(&claim_req_ttl("w1", i64::MAX))
        .await
        .unwrap()
        .expect("work");
    let aid = c.attempt.id.clone();
    assert!(store.requeue_expired(now_ms()).await.unwrap().is_empty());
    assert_eq!(
        store.heartbeat(&aid, "w1", i64::MAX).await.unwrap(),
        LeaseState::Held
    );
    assert!(store.requeue_expired(now_ms()).await.unwrap().is_empty());
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Preparing);
    assert_eq!(a.active_worker.as_deref(), Some("w1"));

    // A short heartbeat shortens the lease again: the sweep then takes it.
    assert_eq!(
        store.heartbeat(&aid, "w1", 1).await.unwrap(),
        LeaseState::Held
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.requeue_expired(now_ms()).await.unwrap(), vec![aid]);
}

/// An outcome must be final: finishing "as running" or "as queued" would leave an active
/// attempt without a lease, which no sweep ever puts back in the queue.
pub async fn finish_attempt_rejects_non_final_status(store: &dyn Store) {
    store.create_task(new_task("bad outcome")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    let before = store.get_attempt(&aid).await.unwrap();
    for s in [
        Status::Queued,
        Status::Running,
        Status::Checking,
        Status::AwaitingApproval,
    ] {
        let r = store
            .finish_attempt(
                &aid,
                "w1",
                AttemptOutcome {
                    status: Some(s),
                    summary: Some("should not be stored".into()),
                    ..Default::default()
                },
            )
            .await;
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{s}: {r:?}");
        assert_eq!(store.get_attempt(&aid).await.unwrap(), before, "{s}");
    }
    // The lease is still held and a proper finish works.
    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Held
    );
    let s = store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s, Status::Done);
}

pub async fn followup_requeues_a_finished_attempt_with_its_conversation(store: &dyn Store) {
    let t = store.create_task(new_task("follow me")).await.unwrap();
    // Not yet finished: refused.
    let err = store.followup(&t.id, "more", "ann").await.unwrap_err();
    assert!(matches!(err, StoreError::WrongState(_)), "{err}");
    let c = claim(store, "w1").await;
    assert_eq!(c.followup, None);
    let aid = c.attempt.id.clone();
    let conv =
        serde_json::json!([{"role": "user", "text": "hi"}, {"role": "assistant", "text": "done"}]);
    store
        .finish_attempt(
            &aid,
            "w1",
            AttemptOutcome {
                status: Some(Status::Done),
                head_commit: Some("c0ffee".into()),
                conversation: Some(conv.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let task = store
        .followup(&t.short_id, "Also cover the empty cart", "ann")
        .await
        .unwrap();
    assert_eq!(task.status, Status::Queued);
    let c2 = claim(store, "w2").await;
    assert_eq!(c2.attempt.id, aid, "the same attempt");
    assert_eq!(c2.run, 2);
    assert_eq!(c2.followup.as_deref(), Some("Also cover the empty cart"));
    assert_eq!(c2.conversation, Some(conv));
    assert_eq!(c2.attempt.resumed_from, "followup");
    assert_eq!(c2.attempt.head_commit.as_deref(), Some("c0ffee"));
    let ev = all_events(store, &aid).await;
    assert!(ev.iter().any(|e| matches!(&e.kind, EventKind::Notice { message } if message == "follow-up from ann: Also cover the empty cart")));
    assert!(ev.iter().any(
        |e| matches!(&e.kind, EventKind::Claimed { resumed_from, .. } if resumed_from == "followup")
    ));
    // A follow-up while it runs is refused; after it finishes, the prompt is gone.
    assert!(matches!(
        store.followup(&t.id, "again", "ann").await.unwrap_err(),
        StoreError::WrongState(_)
    ));
    store
        .finish_attempt(
            &aid,
            "w2",
            AttemptOutcome {
                status: Some(Status::Done),
                head_commit: Some("beef".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let t3 = store.followup(&t.id, "third", "bob").await.unwrap();
    let c3 = claim(store, "w3").await;
    assert_eq!(c3.followup.as_deref(), Some("third"));
    assert_eq!(c3.run, 3);
    assert!(
        c3.conversation.is_some(),
        "kept when a run does not replace it"
    );
    assert_eq!(t3.id, t.id);
    // A cancelled task cannot be followed up.
    store.cancel_task(&t.id, "stop").await.unwrap();
    let err = store.followup(&t.id, "x", "ann").await.unwrap_err();
    assert!(err.to_string().contains("start a new task"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Reviewer and best-of-N
// ---------------------------------------------------------------------------------------------

/// Finishes a claimed attempt (preparing → running first) with a commit, a diff of
/// `lines` insertions, one check and a cost.
async fn finish_with(
    store: &dyn Store,
    c: &ClaimedAttempt,
    worker: &str,
    status: Status,
    lines: u64,
    check_passed: bool,
) {
    store
        .transition(
            &c.attempt.id,
            worker,
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    store
        .finish_attempt(
            &c.attempt.id,
            worker,
            AttemptOutcome {
                status: Some(status),
                head_commit: Some(format!("c0{lines:038}")),
                diff_stats: Some(DiffStats {
                    files_changed: u64::from(lines > 0),
                    insertions: lines,
                    deletions: 0,
                    files: vec![],
                }),
                checks: vec![CheckResult {
                    name: "tests".into(),
                    command: "cargo test".into(),
                    exit_code: Some(if check_passed { 0 } else { 101 }),
                    duration_ms: 10,
                    passed: check_passed,
                    tests: None,
                }],
                usage: Usage {
                    cost_usd: 0.25,
                    ..Default::default()
                },
                error: (status == Status::Failed).then(|| "check 'tests' failed".to_string()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// The reviewer (model, payload, rounds) and an attempt's own model payload are stored at
/// creation and handed to the worker that claims the attempt; the reviewer's verdicts are
/// stored with the outcome.
pub async fn review_settings_and_attempt_payloads_roundtrip(store: &dyn Store) {
    let mut nt = new_task_with_attempts("review me", 2);
    nt.model_payload = Some(serde_json::json!({"turns": [{"text": "task model"}]}));
    nt.attempts[1].model = "scripted:/tmp/other.json".into();
    nt.attempts[1].model_payload = Some(serde_json::json!({"turns": [{"text": "other"}]}));
    nt.review = Some(errand_core::NewReview {
        model: "scripted:/tmp/review.json".into(),
        payload: Some(serde_json::json!({"turns": [{"text": "reviewer"}]})),
        max_rounds: 2,
    });
    let t = store.create_task(nt).await.unwrap();
    assert_eq!(t.review_model.as_deref(), Some("scripted:/tmp/review.json"));
    assert_eq!(t.max_review_rounds, 2);
    assert_eq!(t.attempts[1].model, "scripted:/tmp/other.json");
    let mut claimed = [
        ("w1", claim(store, "w1").await),
        ("w2", claim(store, "w2").await),
    ];
    claimed.sort_by_key(|(_, c)| c.attempt.number);
    let [(w1, c1), (_, c2)] = [claimed[0].clone(), claimed[1].clone()];
    assert_eq!(
        c1.model_payload.as_ref().unwrap()["turns"][0]["text"],
        "task model"
    );
    assert_eq!(
        c2.model_payload.as_ref().unwrap()["turns"][0]["text"],
        "other"
    );
    for c in [&c1, &c2] {
        assert_eq!(
            c.review_payload.as_ref().unwrap()["turns"][0]["text"],
            "reviewer"
        );
        assert_eq!(c.task.max_review_rounds, 2);
    }
    let review = errand_core::AttemptReview {
        model: "scripted:/tmp/review.json".into(),
        verdict: Some(errand_core::Verdict::Approve),
        rounds: vec![
            errand_core::Review {
                round: 1,
                verdict: errand_core::Verdict::ChangesNeeded,
                summary: "one problem".into(),
                findings: vec![errand_core::Finding {
                    file: "src/a.rs".into(),
                    line: Some(7),
                    severity: errand_core::Severity::Error,
                    message: "off by one".into(),
                }],
            },
            errand_core::Review {
                round: 2,
                verdict: errand_core::Verdict::Approve,
                summary: "fixed".into(),
                findings: vec![],
            },
        ],
        error: None,
    };
    store
        .transition(&c1.attempt.id, w1, Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .transition(&c1.attempt.id, w1, Status::Running, Status::Verifying, None)
        .await
        .unwrap();
    assert_eq!(
        store.get_task(&t.id).await.unwrap().status,
        Status::Verifying,
        "the task shows the furthest-along attempt"
    );
    store
        .finish_attempt(
            &c1.attempt.id,
            w1,
            AttemptOutcome {
                status: Some(Status::Done),
                head_commit: Some("abc".into()),
                review: Some(review.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let a = store.get_attempt(&c1.attempt.id).await.unwrap();
    assert_eq!(a.review, Some(review));
    assert_eq!(
        store.get_attempt(&c2.attempt.id).await.unwrap().review,
        None
    );
}

/// Ended attempts are ranked (done before failed; then checks, verdict, diff size, cost); the
/// best one is the task's result until a user picks another, which is recorded with who and
/// when. Running attempts can't be picked, nor attempts without a commit.
pub async fn best_of_n_ranks_and_picks(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("best of three", 3))
        .await
        .unwrap();
    let mut claimed = Vec::new();
    for w in ["w1", "w2", "w3"] {
        claimed.push((w, claim(store, w).await));
    }
    claimed.sort_by_key(|(_, c)| c.attempt.number);
    let by_number = |task: &Task, n: i64| task.attempts.iter().find(|a| a.number == n).cloned();

    // Attempt 1 fails its check; 2 and 3 are still running.
    let (w1, c1) = &claimed[0];
    finish_with(store, c1, w1, Status::Failed, 1, false).await;
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Preparing, "two attempts still run");
    assert_eq!(by_number(&task, 1).unwrap().rank, Some(1));
    assert_eq!(by_number(&task, 2).unwrap().rank, None);
    assert_eq!(task.selected_attempt, Some(1));
    let running = by_number(&task, 2).unwrap();
    assert!(matches!(
        store.pick_attempt(&t.id, &running.id, "bob").await,
        Err(StoreError::WrongState(_))
    ));

    // 2 passes with a big diff, 3 passes with a small one: 3, 2, 1.
    let (w2, c2) = &claimed[1];
    finish_with(store, c2, w2, Status::Done, 40, true).await;
    let (w3, c3) = &claimed[2];
    finish_with(store, c3, w3, Status::Done, 4, true).await;
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Done);
    let ranks: Vec<(i64, Option<u32>)> = task.attempts.iter().map(|a| (a.number, a.rank)).collect();
    assert_eq!(ranks, vec![(1, Some(3)), (2, Some(2)), (3, Some(1))]);
    assert_eq!(task.selected_attempt, Some(3));
    assert_eq!(task.result_attempt().unwrap().number, 3);
    assert_eq!(task.picked, None);
    assert_eq!(
        store.get_attempt(&c3.attempt.id).await.unwrap().rank,
        Some(1),
        "an attempt read alone has its rank too"
    );

    // Bob picks attempt 2.
    let before = now_ms();
    let picked = store
        .pick_attempt(&t.short_id, &c2.attempt.id, "bob")
        .await
        .unwrap();
    assert_eq!(picked.selected_attempt, Some(2));
    assert_eq!(picked.result_attempt().unwrap().id, c2.attempt.id);
    let p = picked.picked.clone().unwrap();
    assert_eq!(
        (p.attempt, p.attempt_id.as_str(), p.by.as_str()),
        (2, c2.attempt.id.as_str(), "bob")
    );
    assert!(p.at_ms >= before);
    assert_eq!(
        by_number(&picked, 3).unwrap().rank,
        Some(1),
        "a pick does not change the ranking"
    );
    let again = store.get_task(&t.id).await.unwrap();
    assert_eq!(again.picked, picked.picked);
    assert_eq!(again.selected_attempt, Some(2));
    let evs = all_events(store, &c2.attempt.id).await;
    assert_contiguous(&c2.attempt.id, &evs);
    assert!(evs.iter().any(|e| matches!(&e.kind,
        EventKind::Notice { message } if message.contains("picked by bob") && message.contains("instead of attempt 3"))));

    // Not an attempt of this task.
    let other = store.create_task(new_task("other")).await.unwrap();
    assert!(matches!(
        store
            .pick_attempt(&t.id, &other.attempts[0].id, "bob")
            .await,
        Err(StoreError::NotFound(_))
    ));
    // A cancelled attempt without a commit can't be picked.
    let cancelled = store.cancel_task(&other.id, "stop").await.unwrap();
    assert!(matches!(
        store
            .pick_attempt(&other.id, &cancelled.attempts[0].id, "bob")
            .await,
        Err(StoreError::WrongState(_))
    ));
}

/// A follow-up on a best-of-N task continues its result attempt, which stays the result
/// while it runs again (recorded as picked by whoever asked).
pub async fn followup_keeps_the_best_of_n_result(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("follow the winner", 2))
        .await
        .unwrap();
    let mut claimed = [
        ("w1", claim(store, "w1").await),
        ("w2", claim(store, "w2").await),
    ];
    claimed.sort_by_key(|(_, c)| c.attempt.number);
    let (wa, a) = &claimed[0];
    let (wb, b) = &claimed[1];
    finish_with(store, a, wa, Status::Done, 9, true).await;
    finish_with(store, b, wb, Status::Done, 3, true).await;
    assert_eq!(
        store.get_task(&t.id).await.unwrap().selected_attempt,
        Some(2)
    );
    let task = store.followup(&t.id, "also this", "ann").await.unwrap();
    let running = by_id(&task, &b.attempt.id);
    assert_eq!(running.status, Status::Queued);
    assert_eq!(task.result_attempt().unwrap().id, b.attempt.id);
    assert_eq!(task.picked.as_ref().map(|p| p.by.as_str()), Some("ann"));
    assert_eq!(task.selected_attempt, Some(2));
}

fn by_id(task: &Task, id: &str) -> errand_core::Attempt {
    task.attempts.iter().find(|a| a.id == id).cloned().unwrap()
}

/// The result of a best-of-N task is handed to delivery once: only when every attempt has
/// ended with at least one done and none cancelled, and to exactly one of concurrent callers.
pub async fn claim_result_delivery_once(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("deliver once", 2))
        .await
        .unwrap();
    let a = claim(store, "w1").await;
    let b = claim(store, "w2").await;
    finish_with(store, &a, "w1", Status::Done, 5, true).await;
    assert!(
        store.claim_result_delivery(&t.id).await.unwrap().is_none(),
        "an attempt is still running"
    );
    finish_with(store, &b, "w2", Status::Done, 2, true).await;
    let results = join_all((0..6).map(|_| store.claim_result_delivery(&t.id)).collect()).await;
    let winners: Vec<Task> = results.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(winners.len(), 1, "exactly one caller delivers");
    assert_eq!(winners[0].result_attempt().unwrap().id, b.attempt.id);
    assert!(store.claim_result_delivery(&t.id).await.unwrap().is_none());

    // A cancelled attempt: nothing is delivered on its own.
    let t2 = store
        .create_task(new_task_with_attempts("cancel one", 2))
        .await
        .unwrap();
    let c = claim(store, "w3").await;
    finish_with(store, &c, "w3", Status::Done, 5, true).await;
    store.cancel_task(&t2.id, "stop").await.unwrap();
    assert!(store.claim_result_delivery(&t2.id).await.unwrap().is_none());

    // All failed: nothing to deliver.
    let t3 = store
        .create_task(new_task_with_attempts("all fail", 2))
        .await
        .unwrap();
    let d = claim(store, "w4").await;
    let e = claim(store, "w5").await;
    finish_with(store, &d, "w4", Status::Failed, 1, false).await;
    finish_with(store, &e, "w5", Status::Failed, 1, false).await;
    assert_eq!(store.get_task(&t3.id).await.unwrap().status, Status::Failed);
    assert!(store.claim_result_delivery(&t3.id).await.unwrap().is_none());
}

/// Cancelling a best-of-N task cancels every attempt, queued or running; running ones learn
/// it from their heartbeat.
pub async fn cancel_cancels_every_attempt(store: &dyn Store) {
    let t = store
        .create_task(new_task_with_attempts("cancel all", 3))
        .await
        .unwrap();
    let a = claim(store, "w1").await;
    let b = claim(store, "w2").await;
    store
        .transition(
            &a.attempt.id,
            "w1",
            Status::Preparing,
            Status::Running,
            None,
        )
        .await
        .unwrap();
    let task = store
        .cancel_task(&t.id, "cancelled by the user")
        .await
        .unwrap();
    assert_eq!(task.status, Status::Cancelled);
    assert!(
        task.attempts.iter().all(|x| x.status == Status::Cancelled),
        "{:?}",
        task.attempts
    );
    assert_eq!(
        store.heartbeat(&a.attempt.id, "w1", 60_000).await.unwrap(),
        LeaseState::Cancelled
    );
    assert_eq!(
        store.heartbeat(&b.attempt.id, "w2", 60_000).await.unwrap(),
        LeaseState::Cancelled
    );
    assert!(
        store
            .claim_attempt(&claim_req("w3"))
            .await
            .unwrap()
            .is_none()
    );
    for x in &task.attempts {
        let evs = all_events(store, &x.id).await;
        assert_eq!(
            status_events(&evs)
                .last()
                .map(|(_, to, r)| (*to, r.clone())),
            Some((Status::Cancelled, Some("cancelled by the user".into())))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Plan mode
// ---------------------------------------------------------------------------------------------

/// A plan-mode task with one attempt.
pub fn new_plan_task(title: &str) -> NewTask {
    let mut t = new_task(title);
    t.mode = "plan".into();
    t
}

fn plan_step(step: &str) -> errand_core::PlanStep {
    errand_core::PlanStep {
        step: step.into(),
        status: "pending".into(),
    }
}

/// A planning run's end, with a recognisable conversation.
fn submission(steps: &[&str], conv_tag: &str, turns: u64) -> errand_store::PlanSubmission {
    errand_store::PlanSubmission {
        explanation: Some(format!("why {conv_tag}")),
        steps: steps.iter().map(|s| plan_step(s)).collect(),
        summary: Some(format!("summary {conv_tag}")),
        conversation: Some(serde_json::json!([{"role": "user", "text": conv_tag}])),
        usage: Usage {
            input_tokens: 100 * turns,
            output_tokens: 10 * turns,
            ..Default::default()
        },
        turns,
    }
}

/// Claims a plan-mode attempt and moves it to planning.
async fn claim_planning(store: &dyn Store, worker: &str) -> ClaimedAttempt {
    let c = claim(store, worker).await;
    store
        .transition(
            &c.attempt.id,
            worker,
            Status::Preparing,
            Status::Planning,
            None,
        )
        .await
        .unwrap();
    c
}

fn decision(
    action: errand_core::PlanAction,
    actor: &str,
    comment: Option<&str>,
) -> errand_store::PlanDecision {
    errand_store::PlanDecision {
        action,
        actor: actor.into(),
        comment: comment.map(str::to_string),
    }
}

/// A submitted plan waits in `awaiting_approval` with no lease: no heartbeat keeps it, no
/// sweep re-queues it, no worker can claim it.
pub async fn submitted_plan_waits_without_a_lease(store: &dyn Store) {
    let t = store.create_task(new_plan_task("plan me")).await.unwrap();
    assert_eq!(t.mode, "plan");
    assert_eq!(t.plan, None);
    assert!(t.plan_revisions.is_empty() && t.approvals.is_empty());
    let c = claim_planning(store, "w1").await;
    let aid = c.attempt.id.clone();
    // Only the lease holder can submit.
    assert!(matches!(
        store
            .submit_plan(&aid, "intruder", submission(&["a"], "x", 1))
            .await
            .unwrap_err(),
        StoreError::LeaseLost(_)
    ));
    // A plan without steps is refused.
    assert!(matches!(
        store
            .submit_plan(&aid, "w1", submission(&[], "x", 1))
            .await
            .unwrap_err(),
        StoreError::Invalid(_)
    ));
    let before = now_ms();
    let s = store
        .submit_plan(
            &aid,
            "w1",
            submission(&["Read the code", "Change it"], "c1", 2),
        )
        .await
        .unwrap();
    assert_eq!(s, Status::AwaitingApproval);
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::AwaitingApproval);
    let a = &task.attempts[0];
    assert_eq!(a.status, Status::AwaitingApproval);
    assert_eq!(a.active_worker, None, "no lease while waiting");
    assert_eq!(a.finished_at_ms, None);
    assert_eq!(a.turns, 2);
    assert_eq!(a.usage.input_tokens, 200);
    let plan = task.plan.clone().expect("the current plan");
    assert_eq!(plan.number, 1);
    assert!(plan.created_at_ms >= before - 1000);
    assert_eq!(
        plan.steps,
        vec![plan_step("Read the code"), plan_step("Change it")]
    );
    assert_eq!(plan.explanation.as_deref(), Some("why c1"));
    assert_eq!(plan.summary.as_deref(), Some("summary c1"));
    assert_eq!(plan.turns, 2);
    assert_eq!(plan.decision, None);
    assert_eq!(task.plan_revisions, vec![plan.clone()]);
    // The listing carries the plan too.
    let page = store
        .list_tasks(&TaskQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.tasks[0].plan, Some(plan));

    assert_eq!(
        store.heartbeat(&aid, "w1", 60_000).await.unwrap(),
        LeaseState::Lost
    );
    assert!(
        store
            .requeue_expired(now_ms() + 3_600_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .requeue_orphans("the server restarted")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_attempt(&claim_req("w2"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.get_attempt(&aid).await.unwrap().status,
        Status::AwaitingApproval
    );
    // The log: the plan, then the wait.
    let ev = all_events(store, &aid).await;
    assert_contiguous(&aid, &ev);
    let n = ev.len();
    assert!(
        matches!(&ev[n - 2].kind, EventKind::PlanProposed { revision: 1, steps, .. } if steps.len() == 2),
        "{:?}",
        ev[n - 2]
    );
    assert_eq!(
        status_events(&ev).last().map(|s| (s.0, s.1)),
        Some((Status::Planning, Status::AwaitingApproval))
    );
    // Submitting again (the lease is gone) is refused.
    assert!(matches!(
        store
            .submit_plan(&aid, "w1", submission(&["a"], "x", 1))
            .await
            .unwrap_err(),
        StoreError::LeaseLost(_)
    ));
    // A waiting task can be cancelled.
    let cancelled = store.cancel_task(&t.id, "not needed").await.unwrap();
    assert_eq!(cancelled.status, Status::Cancelled);
}

/// Revise sends the plan back with the comment and keeps the conversation; approve queues
/// the implementation; both are recorded with actor and time; a decision in any other state
/// is refused with the state named.
pub async fn plan_revise_then_approve(store: &dyn Store) {
    use errand_core::PlanAction::*;
    let t = store.create_task(new_plan_task("rbac")).await.unwrap();
    let err = store
        .decide_plan(&t.id, &decision(Approve, "ann", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongState(m) if m == &format!("task {} is queued, not awaiting approval (the agent is still working on the plan; wait for it)", t.short_id)),
        "{err}"
    );
    let c = claim_planning(store, "w1").await;
    let aid = c.attempt.id.clone();
    let err = store
        .decide_plan(&t.id, &decision(Approve, "ann", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is planning, not awaiting approval"),
        "{err}"
    );
    store
        .submit_plan(&aid, "w1", submission(&["Swap the module"], "c1", 1))
        .await
        .unwrap();

    // Revise needs a comment.
    let err = store
        .decide_plan(&t.short_id, &decision(Revise, "ann", Some("  ")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let before = now_ms();
    let task = store
        .decide_plan(
            &t.short_id,
            &decision(Revise, "ann", Some("Keep the old tokens valid for a week")),
        )
        .await
        .unwrap();
    let after = now_ms();
    assert_eq!(task.status, Status::Queued);
    assert_eq!(task.approvals.len(), 1);
    let ap = &task.approvals[0];
    assert_eq!(ap.action, Revise);
    assert_eq!(ap.actor, "ann");
    assert_eq!(
        ap.comment.as_deref(),
        Some("Keep the old tokens valid for a week")
    );
    assert_eq!(ap.revision, 1);
    assert!(ap.at_ms >= before && ap.at_ms <= after);
    let r1 = &task.plan_revisions[0];
    assert_eq!(r1.decision.as_deref(), Some("revised"));
    assert_eq!(r1.decided_by.as_deref(), Some("ann"));
    assert_eq!(r1.decided_at_ms, Some(ap.at_ms));
    assert_eq!(
        r1.comment.as_deref(),
        Some("Keep the old tokens valid for a week")
    );

    // The next run plans again, with the conversation so far.
    let c2 = claim_planning(store, "w2").await;
    assert_eq!(c2.attempt.id, aid);
    assert_eq!(c2.run, 2);
    assert_eq!(c2.followup, None);
    assert_eq!(
        c2.conversation,
        Some(serde_json::json!([{"role": "user", "text": "c1"}]))
    );
    assert_eq!(c2.attempt.resumed_from, "plan");
    assert_eq!(c2.task.approvals.last().map(|a| a.action), Some(Revise));
    let ev = all_events(store, &aid).await;
    assert!(ev.iter().any(|e| matches!(&e.kind, EventKind::Approval { action: Revise, actor, comment: Some(c), revision: 1 } if actor == "ann" && c.starts_with("Keep the old"))));
    assert!(ev.iter().any(|e| matches!(&e.kind, EventKind::Claimed { note: Some(n), resumed_from, .. } if resumed_from == "plan" && n.contains("revises plan revision 1 as ann asked: Keep the old tokens"))), "{ev:#?}");
    store
        .submit_plan(
            &aid,
            "w2",
            submission(&["Swap the module", "Keep old tokens a week"], "c2", 3),
        )
        .await
        .unwrap();
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.plan_revisions.len(), 2);
    assert_eq!(task.plan.as_ref().map(|p| p.number), Some(2));
    assert_eq!(task.plan.as_ref().map(|p| p.steps.len()), Some(2));
    assert_eq!(task.plan_revisions[1].decision, None);

    let task = store
        .decide_plan(&t.id, &decision(Approve, "bob", None))
        .await
        .unwrap();
    assert_eq!(task.status, Status::Queued);
    assert_eq!(
        task.approvals
            .iter()
            .map(|a| (a.action, a.actor.as_str(), a.revision))
            .collect::<Vec<_>>(),
        vec![(Revise, "ann", 1), (Approve, "bob", 2)]
    );
    assert_eq!(task.plan_revisions[1].decision.as_deref(), Some("approved"));
    let c3 = claim(store, "w3").await;
    assert_eq!(c3.attempt.id, aid);
    assert_eq!(
        c3.conversation,
        Some(serde_json::json!([{"role": "user", "text": "c2"}]))
    );
    assert_eq!(c3.attempt.usage.input_tokens, 300, "planning usage kept");
    // An approved plan runs in run mode.
    store
        .transition(&aid, "w3", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    let ev = all_events(store, &aid).await;
    assert_contiguous(&aid, &ev);
    assert!(ev.iter().any(|e| matches!(&e.kind, EventKind::Claimed { note: Some(n), .. } if n.contains("implements plan revision 2, approved by bob"))));
    let err = store
        .decide_plan(&t.id, &decision(Reject, "cy", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongState(m) if m.contains("is running, not awaiting approval (its plan was already approved)")),
        "{err}"
    );

    // A run-mode task has no plan to decide on.
    let run = store.create_task(new_task("plain")).await.unwrap();
    let err = store
        .decide_plan(&run.id, &decision(Approve, "ann", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongState(m) if m.contains("not created in plan mode")),
        "{err}"
    );
    assert!(run.plan.is_none() && run.approvals.is_empty());
    assert!(matches!(
        store
            .decide_plan("zzzzzzzz", &decision(Approve, "ann", None))
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));
}

/// Reject ends the task, cancelled, with the reason and the actor.
pub async fn plan_reject_cancels_with_the_reason(store: &dyn Store) {
    use errand_core::PlanAction::*;
    let t = store.create_task(new_plan_task("risky")).await.unwrap();
    let c = claim_planning(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .submit_plan(&aid, "w1", submission(&["Drop the table"], "c1", 1))
        .await
        .unwrap();
    let task = store
        .decide_plan(&t.id, &decision(Reject, "cy", Some("too risky")))
        .await
        .unwrap();
    assert_eq!(task.status, Status::Cancelled);
    assert_eq!(
        task.error.as_deref(),
        Some("plan rejected by cy: too risky")
    );
    let a = &task.attempts[0];
    assert_eq!(a.status, Status::Cancelled);
    assert_eq!(a.error.as_deref(), Some("plan rejected by cy: too risky"));
    assert!(a.finished_at_ms.is_some());
    assert_eq!(task.approvals.len(), 1);
    assert_eq!(task.approvals[0].action, Reject);
    assert_eq!(task.approvals[0].actor, "cy");
    assert_eq!(task.plan_revisions[0].decision.as_deref(), Some("rejected"));
    let ev = all_events(store, &aid).await;
    assert_eq!(
        status_events(&ev).last(),
        Some(&(
            Status::AwaitingApproval,
            Status::Cancelled,
            Some("plan rejected by cy: too risky".to_string())
        ))
    );
    let err = store
        .decide_plan(&t.id, &decision(Approve, "ann", None))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is cancelled, not awaiting approval (it has ended)"),
        "{err}"
    );
    assert!(
        store
            .claim_attempt(&claim_req("w2"))
            .await
            .unwrap()
            .is_none()
    );

    // Without a comment the reason names the actor only; a plain cancel keeps no reason.
    let t2 = store.create_task(new_plan_task("other")).await.unwrap();
    let c2 = claim_planning(store, "w1").await;
    store
        .submit_plan(&c2.attempt.id, "w1", submission(&["x"], "c", 1))
        .await
        .unwrap();
    let task = store
        .decide_plan(&t2.id, &decision(Reject, "dee", None))
        .await
        .unwrap();
    assert_eq!(task.error.as_deref(), Some("plan rejected by dee"));
    let t3 = store.create_task(new_task("cancel me")).await.unwrap();
    assert_eq!(store.cancel_task(&t3.id, "stop").await.unwrap().error, None);
}

/// A plan submitted after the user cancelled the attempt: it stays cancelled, lease released.
pub async fn submit_plan_after_cancel_releases_the_lease(store: &dyn Store) {
    let t = store.create_task(new_plan_task("cancel me")).await.unwrap();
    let c = claim_planning(store, "w1").await;
    store.cancel_task(&t.id, "stop").await.unwrap();
    let s = store
        .submit_plan(&c.attempt.id, "w1", submission(&["a"], "c", 1))
        .await
        .unwrap();
    assert_eq!(s, Status::Cancelled);
    let task = store.get_task(&t.id).await.unwrap();
    assert_eq!(task.status, Status::Cancelled);
    assert_eq!(task.attempts[0].active_worker, None);
    assert!(task.plan_revisions.is_empty(), "no plan recorded");
}

// ---------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------

/// A checkpoint after `turn`, covering the attempt's events so far.
pub async fn checkpoint_at(store: &dyn Store, aid: &str, turn: u64) -> Checkpoint {
    let last_seq = store.get_attempt(aid).await.unwrap().last_seq;
    Checkpoint {
        turn,
        commit: format!("{turn:040x}"),
        conversation: serde_json::json!([{"role": "user", "text": "task"}, {"turn": turn}]),
        usage: Usage {
            input_tokens: 100 * turn,
            output_tokens: 10 * turn,
            cost_usd: 0.01 * turn as f64,
            ..Default::default()
        },
        last_seq,
        state: serde_json::json!({"plan": ["a", "b"], "turns": turn}),
    }
}

/// Only the lease holder of an active attempt saves checkpoints, each after a later turn than
/// the saved one, covering events that exist (compare-and-set).
pub async fn checkpoint_is_fenced_and_only_moves_forward(store: &dyn Store) {
    store.create_task(new_task("long run")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    assert_eq!(c.checkpoint, None);
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), None);
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .append_events(&aid, Some("w1"), vec![notice("turn 1")])
        .await
        .unwrap();
    let cp1 = checkpoint_at(store, &aid, 1).await;
    store.checkpoint(&aid, "w1", &cp1).await.unwrap();
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), Some(cp1.clone()));

    // Not after a turn already saved.
    for turn in [0, 1] {
        let mut stale = cp1.clone();
        stale.turn = turn;
        stale.commit = "f".repeat(40);
        let err = store.checkpoint(&aid, "w1", &stale).await.unwrap_err();
        assert!(matches!(err, StoreError::WrongState(_)), "{err:?}");
    }
    // Not covering events that do not exist, not without a commit.
    let mut ahead = checkpoint_at(store, &aid, 2).await;
    ahead.last_seq += 1;
    let err = store.checkpoint(&aid, "w1", &ahead).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let mut no_commit = checkpoint_at(store, &aid, 2).await;
    no_commit.commit = " ".into();
    let err = store.checkpoint(&aid, "w1", &no_commit).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    // Not by another worker; not for an unknown attempt.
    let cp2 = checkpoint_at(store, &aid, 2).await;
    let err = store.checkpoint(&aid, "w2", &cp2).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost(_)), "{err:?}");
    let err = store.checkpoint(&new_id(), "w1", &cp2).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // None of that changed what is saved.
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), Some(cp1));
    store.checkpoint(&aid, "w1", &cp2).await.unwrap();
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), Some(cp2.clone()));

    // Once the lease expired, the old holder can't save one.
    store.heartbeat(&aid, "w1", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.requeue_expired(now_ms()).await.unwrap(),
        vec![aid.clone()]
    );
    let cp3 = checkpoint_at(store, &aid, 3).await;
    let err = store.checkpoint(&aid, "w1", &cp3).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost(_)), "{err:?}");
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), Some(cp2));
}

/// A dead run's work after its checkpoint is rolled back when the attempt goes back to the
/// queue: those events stay, in place, marked; the next claim resumes from the checkpoint
/// and says so; seqs stay contiguous. A second crash rolls back only the new run's work.
pub async fn requeue_rolls_back_to_the_checkpoint_and_the_claim_resumes_from_it(store: &dyn Store) {
    store.create_task(new_task("crash twice")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .transition(&aid, "w1", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .append_events(&aid, Some("w1"), vec![notice("turn 1"), notice("turn 2")])
        .await
        .unwrap();
    let cp = checkpoint_at(store, &aid, 2).await;
    store.checkpoint(&aid, "w1", &cp).await.unwrap();
    let after: Vec<EventKind> = (0..3).map(|i| notice(format!("lost {i}"))).collect();
    store
        .append_events(&aid, Some("w1"), after.clone())
        .await
        .unwrap();
    // A status change after the checkpoint is part of the history, not of the work.
    store
        .transition(&aid, "w1", Status::Running, Status::Checking, None)
        .await
        .unwrap();
    store
        .append_events(&aid, Some("w1"), vec![notice("lost 3")])
        .await
        .unwrap();

    let requeued = store.requeue_orphans("the server restarted").await.unwrap();
    assert_eq!(requeued, vec![aid.clone()]);
    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    for e in &events {
        let work = !matches!(e.kind, EventKind::Claimed { .. } | EventKind::Status { .. });
        assert_eq!(e.rolled_back, e.seq > cp.last_seq && work, "{e:?}");
    }
    let rolled: Vec<i64> = events
        .iter()
        .filter(|e| e.rolled_back)
        .map(|e| e.seq)
        .collect();
    assert_eq!(rolled.len(), 4);
    let (first, last) = (rolled[0], rolled[3]);
    let (_, to, reason) = status_events(&events).last().cloned().unwrap();
    assert_eq!(to, Status::Queued);
    let reason = reason.unwrap();
    assert!(reason.contains("the server restarted"), "{reason}");
    assert!(
        reason.contains(&format!(
            "resuming from the checkpoint after turn 2; 4 later events (#{first}–#{last}) rolled back"
        )),
        "{reason}"
    );
    let a = store.get_attempt(&aid).await.unwrap();
    assert_eq!(a.status, Status::Queued);
    // The restart reason stays the cause; the rollback is told by the events.
    assert!(!a.restart_reason.unwrap().contains("rolled back"));

    let c2 = claim(store, "w2").await;
    assert_eq!(c2.attempt.id, aid);
    assert_eq!(c2.run, 2);
    assert_eq!(c2.checkpoint.as_ref(), Some(&cp));
    assert_eq!(c2.attempt.resumed_from, "checkpoint");
    let claimed = store.list_events(&aid, a.last_seq, 10).await.unwrap();
    match &claimed[0].kind {
        EventKind::Claimed {
            resumed_from,
            turn,
            rolled_back_events,
            note,
            ..
        } => {
            assert_eq!(resumed_from, "checkpoint");
            assert_eq!(*turn, Some(2));
            assert_eq!(*rolled_back_events, Some(4));
            let note = note.clone().unwrap();
            assert!(
                note.contains("run 2 resumes from the checkpoint after turn 2"),
                "{note}"
            );
            assert!(note.contains(&format!("(#{first}–#{last})")), "{note}");
            assert!(note.contains("the server restarted"), "{note}");
        }
        other => panic!("first event of run 2 must be `claimed`, got {other:?}"),
    }
    assert!(claimed.iter().all(|e| !e.rolled_back && e.run == 2));

    // Run 2 works, checkpoints after turn 3 (after turn 3 again is refused), works more and
    // dies too: only its work after its own checkpoint is rolled back.
    store
        .transition(&aid, "w2", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    store
        .append_events(&aid, Some("w2"), vec![notice("turn 3")])
        .await
        .unwrap();
    let cp3 = checkpoint_at(store, &aid, 3).await;
    store.checkpoint(&aid, "w2", &cp3).await.unwrap();
    let mut again = cp3.clone();
    again.commit = "e".repeat(40);
    assert!(matches!(
        store.checkpoint(&aid, "w2", &again).await.unwrap_err(),
        StoreError::WrongState(_)
    ));
    store
        .append_events(&aid, Some("w2"), vec![notice("lost 4")])
        .await
        .unwrap();
    store.heartbeat(&aid, "w2", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.requeue_expired(now_ms()).await.unwrap(),
        vec![aid.clone()]
    );
    let events = all_events(store, &aid).await;
    assert_contiguous(&aid, &events);
    let newly: Vec<&Event> = events
        .iter()
        .filter(|e| e.rolled_back && e.seq > cp3.last_seq)
        .collect();
    assert_eq!(newly.len(), 1);
    assert_eq!(newly[0].kind, notice("lost 4"));
    assert_eq!(events.iter().filter(|e| e.rolled_back).count(), 5);
    let c3 = claim(store, "w3").await;
    assert_eq!(c3.run, 3);
    assert_eq!(c3.checkpoint, Some(cp3));
    let ev = store
        .list_events(&aid, events.len() as i64, 1)
        .await
        .unwrap();
    assert!(matches!(
        &ev[0].kind,
        EventKind::Claimed {
            turn: Some(3),
            rolled_back_events: Some(1),
            ..
        }
    ));

    // The attempt ends: its checkpoint is gone and a later requeue rolls nothing back.
    store
        .finish_attempt(
            &aid,
            "w3",
            AttemptOutcome {
                status: Some(Status::Done),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), None);
}

/// Without a checkpoint a restarted run starts over and nothing is rolled back; a cancelled
/// attempt takes no checkpoints, and a queued one that is cancelled loses its checkpoint.
pub async fn checkpoints_without_resume_and_after_cancel(store: &dyn Store) {
    store.create_task(new_task("no checkpoint")).await.unwrap();
    let c = claim(store, "w1").await;
    let aid = c.attempt.id.clone();
    store
        .append_events(&aid, Some("w1"), vec![notice("work")])
        .await
        .unwrap();
    store.requeue_orphans("restart").await.unwrap();
    assert!(all_events(store, &aid).await.iter().all(|e| !e.rolled_back));
    let c = claim(store, "w2").await;
    assert_eq!(c.checkpoint, None);
    assert_eq!(c.attempt.resumed_from, "start");

    // Cancelled while running: the worker may not save a checkpoint any more.
    store
        .transition(&aid, "w2", Status::Preparing, Status::Running, None)
        .await
        .unwrap();
    let cp = checkpoint_at(store, &aid, 1).await;
    store.checkpoint(&aid, "w2", &cp).await.unwrap();
    store.cancel_task(&c.task.id, "stop").await.unwrap();
    let cp2 = checkpoint_at(store, &aid, 2).await;
    let err = store.checkpoint(&aid, "w2", &cp2).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongState(_)), "{err:?}");
    store
        .finish_attempt(&aid, "w2", AttemptOutcome::default())
        .await
        .unwrap();
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), None);

    // Checkpointed, crashed, then cancelled while queued: nothing will resume it.
    let t = store
        .create_task(new_task("cancel in queue"))
        .await
        .unwrap();
    let c = claim(store, "w3").await;
    let aid = c.attempt.id.clone();
    let cp = checkpoint_at(store, &aid, 4).await;
    store.checkpoint(&aid, "w3", &cp).await.unwrap();
    store.requeue_orphans("restart").await.unwrap();
    store.cancel_task(&t.id, "never mind").await.unwrap();
    assert_eq!(store.get_checkpoint(&aid).await.unwrap(), None);
    assert!(
        store
            .claim_attempt(&claim_req("w4"))
            .await
            .unwrap()
            .is_none()
    );

    // A run that could not use its checkpoint starts over: its turn 1 replaces the earlier
    // run's turn 5 (the same run could not go back).
    let t2 = store.create_task(new_task("start over")).await.unwrap();
    let r1 = claim(store, "w5").await;
    let other = r1.attempt.id.clone();
    store
        .checkpoint(&other, "w5", &checkpoint_at(store, &other, 5).await)
        .await
        .unwrap();
    store.requeue_orphans("restart").await.unwrap();
    let r2 = claim(store, "w6").await;
    assert_eq!(r2.attempt.id, other);
    assert!(r2.checkpoint.is_some());
    let one = checkpoint_at(store, &other, 1).await;
    store.checkpoint(&other, "w6", &one).await.unwrap();
    assert_eq!(store.get_checkpoint(&other).await.unwrap(), Some(one));
    assert!(matches!(
        store
            .checkpoint(&other, "w6", &checkpoint_at(store, &other, 1).await)
            .await
            .unwrap_err(),
        StoreError::WrongState(_)
    ));
    store.cancel_task(&t2.id, "done here").await.unwrap();
}
