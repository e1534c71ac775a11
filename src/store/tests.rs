//! The store's promise, tested on a real spool in a temp dir: every change is on disk and in
//! the index, or in neither; illegal moves write nothing; a restart sees what was written.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::*;

fn tenant() -> Dest {
    Dest::Tenant("acme".into())
}

async fn open(dir: &Path) -> Store {
    let (store, problems) = Store::open(dir, |_| tenant(), CancellationToken::new())
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    store
}

async fn accept(store: &Store, status: Status) -> QueueId {
    let mut env = test_envelope(1);
    env.status = status;
    let id = env.id.clone();
    store
        .accept(env, b"Subject: hi\r\n\r\nhello\r\n", tenant())
        .await
        .unwrap();
    id
}

fn state(store: &Store, id: &QueueId) -> Option<State> {
    store.get(id).map(|l| l.state)
}

/// The state file of `id` (the spool's layout: `q/<last hex digit>/<id>.st`).
fn state_file(dir: &Path, id: &QueueId) -> std::path::PathBuf {
    let s = id.as_str();
    dir.join("q")
        .join(&s[s.len() - 1..])
        .join(format!("{s}.st"))
}

/// Makes every write of a state file under `dir` fail (its temp shard directory is gone);
/// returns what puts it back.
fn break_writes(dir: &Path, id: &QueueId) -> impl FnOnce() {
    let s = id.as_str();
    let tmp = dir.join("tmp").join(&s[s.len() - 1..]);
    std::fs::remove_dir(&tmp).unwrap();
    move || std::fs::create_dir(&tmp).unwrap()
}

#[tokio::test]
async fn suspend_release_and_delete_are_on_disk_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let (a, b) = (
        accept(&store, Status::Queued).await,
        accept(&store, Status::Queued).await,
    );
    assert_eq!(state(&store, &a), Some(State::Queued));
    assert_eq!(
        store.change(&a, Change::Suspend).await.unwrap(),
        State::Queued
    );
    assert_eq!(
        store.change(&b, Change::Delete).await.unwrap(),
        State::Queued
    );
    assert_eq!(state(&store, &a), Some(State::Suspended));
    assert!(
        store.take(&tenant()).is_none(),
        "suspended mail is not delivered"
    );
    drop(store);

    let store = open(dir.path()).await;
    assert_eq!(state(&store, &a), Some(State::Suspended));
    assert_eq!(state(&store, &b), None, "deleted stays deleted");
    assert_eq!(
        store.change(&a, Change::Release).await.unwrap(),
        State::Suspended
    );
    let taken = store.take(&tenant()).expect("released mail is due now");
    assert_eq!(&taken.envelope().id, &a);
    taken.give_back();
    assert_eq!(state(&store, &a), Some(State::Queued), "given back untried");
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(state(&store, &a), Some(State::Queued));
}

#[tokio::test]
async fn an_illegal_change_writes_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let q = accept(&store, Status::quarantined("spam".into(), [])).await;
    let e = store.change(&q, Change::Suspend).await.unwrap_err();
    assert!(
        matches!(
            e,
            ChangeError::Illegal(Illegal {
                from: State::Quarantined,
                event: Event::Suspend
            })
        ),
        "{e}"
    );
    assert!(!state_file(dir.path(), &q).exists(), "nothing written");
    assert_eq!(state(&store, &q), Some(State::Quarantined));
    assert!(
        store.take(&tenant()).is_none(),
        "quarantined mail is not delivered"
    );
    // A caller that saw another state is told the message moved on.
    let e = store
        .change_from(&q, State::Held, Change::Delete)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ChangeError::Moved {
                now: State::Quarantined,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        store.change(&QueueId::generate(), Change::Delete).await,
        Err(ChangeError::NotFound)
    ));
    // Quarantine ends by release (or delete, or expiry) only.
    store.change(&q, Change::Expire).await.unwrap();
    assert_eq!(state(&store, &q), None);
}

#[tokio::test]
async fn a_change_the_disk_refuses_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = accept(&store, Status::Queued).await;
    let repair = break_writes(dir.path(), &id);
    let e = store.change(&id, Change::Suspend).await.unwrap_err();
    assert!(matches!(e, ChangeError::Io(_)), "{e}");
    assert_eq!(state(&store, &id), Some(State::Queued), "index unchanged");
    assert!(!state_file(dir.path(), &id).exists(), "disk unchanged");
    // Still where it was: a worker takes it.
    let taken = store.take(&tenant()).expect("still ready for delivery");
    assert_eq!(&taken.envelope().id, &id);
    drop(taken);
    repair();
    store.change(&id, Change::Suspend).await.unwrap();
    assert_eq!(state(&store, &id), Some(State::Suspended));
}

#[tokio::test]
async fn a_worker_holds_its_message_until_it_settles_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = accept(&store, Status::Queued).await;
    let msg = store.take(&tenant()).unwrap();
    assert_eq!(state(&store, &id), Some(State::Delivering));
    let e = store.change(&id, Change::Delete).await.unwrap_err();
    assert!(e.to_string().contains("try again"), "{e}");
    assert_eq!(
        store.read(&id).await.unwrap(),
        b"Subject: hi\r\n\r\nhello\r\n"
    );
    // Dropped without an outcome (its task cancelled): given back, as it was.
    drop(msg);
    assert_eq!(state(&store, &id), Some(State::Queued));

    // An attempt that leaves the recipient pending: deferred, on disk.
    let msg = store.take(&tenant()).unwrap();
    let mut p = msg.progress().clone();
    p.attempts = 1;
    p.next = now_secs() + 3600;
    p.error = "451 4.3.0 try later".into();
    msg.settle(p).await.unwrap();
    assert_eq!(state(&store, &id), Some(State::Deferred));
    assert!(store.take(&tenant()).is_none(), "not due for an hour");
    drop(store);
    let store = open(dir.path()).await;
    let l = store.get(&id).unwrap();
    assert_eq!((l.state, l.progress.attempts), (State::Deferred, 1));

    // Delivered: complete, gone, also after a restart.
    assert_eq!(store.flush(Some(&id)), 1);
    let msg = store.take(&tenant()).unwrap();
    let mut p = msg.progress().clone();
    p.rcpts[0] = Some(RcptOutcome::Delivered { at: now_secs() });
    msg.settle(p).await.unwrap();
    assert!(store.is_empty());
    drop(store);
    assert!(open(dir.path()).await.is_empty());
}

#[tokio::test]
async fn a_message_set_aside_is_suspended_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = accept(&store, Status::Queued).await;
    let msg = store.take(&tenant()).unwrap();
    let p = msg.progress().clone();
    msg.set_aside(p, "spool read failed".into()).await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    let l = store.get(&id).unwrap();
    assert_eq!(l.state, State::Suspended);
    assert_eq!(l.progress.error, "spool read failed");
}

/// While the disk refuses an outcome the worker keeps the message (no one sends it again);
/// when the store stops first, the message is given back exactly as last written.
#[tokio::test]
async fn an_outcome_the_disk_refuses_is_retried_or_given_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let stopping = CancellationToken::new();
    let (store, _) = Store::open(dir.path(), |_| tenant(), stopping.clone())
        .await
        .unwrap();
    let id = accept(&store, Status::Queued).await;

    let repair = break_writes(dir.path(), &id);
    let msg = store.take(&tenant()).unwrap();
    let mut p = msg.progress().clone();
    p.attempts = 1;
    p.next = now_secs() + 3600;
    let settling = msg.settle(p);
    tokio::pin!(settling);
    // It does not return (neither done nor failed) while the disk refuses.
    let refused = tokio::time::timeout(std::time::Duration::from_millis(300), &mut settling);
    assert!(refused.await.is_err(), "settled although the disk refuses");
    assert_eq!(
        state(&store, &id),
        Some(State::Delivering),
        "kept while refused"
    );
    repair();
    settling.await.unwrap();
    assert_eq!(state(&store, &id), Some(State::Deferred));

    assert_eq!(store.flush(Some(&id)), 1);
    let repair = break_writes(dir.path(), &id);
    let msg = store.take(&tenant()).unwrap();
    let mut p = msg.progress().clone();
    p.attempts = 2;
    stopping.cancel();
    assert!(msg.set_aside(p, "x".into()).await.is_err());
    let l = store.get(&id).unwrap();
    assert_eq!(
        (l.state, l.progress.attempts),
        (State::Deferred, 1),
        "as last written"
    );
    repair();
}

/// A spool written before the operator's hold was renamed says `status: hold`: an upgraded
/// engine recovers it as suspended, and writes the new word from then on.
#[tokio::test]
async fn a_spool_from_before_the_rename_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = accept(&store, Status::Queued).await;
    drop(store);
    std::fs::write(
        state_file(dir.path(), &id),
        "status: hold\r\nattempts: 2\r\nnext: 0\r\nerror: \r\nrcpt: 0 pending\r\n\r\n",
    )
    .unwrap();
    let store = open(dir.path()).await;
    let l = store.get(&id).unwrap();
    assert_eq!((l.state, l.progress.attempts), (State::Suspended, 2));
    store.change(&id, Change::Release).await.unwrap();
    store.change(&id, Change::Suspend).await.unwrap();
    let text = std::fs::read_to_string(state_file(dir.path(), &id)).unwrap();
    assert!(text.starts_with("status: suspended\r\n"), "{text}");
}

/// A message prepared but never decided (its session cancelled before the `250`, as at
/// shutdown) is removed, not delivered: its sender heard nothing and sends it again, so
/// delivering this copy too would be a duplicate. A restart finds nothing of it.
#[tokio::test]
async fn a_prepared_message_dropped_undecided_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let env = test_envelope(1);
    let id = env.id.clone();
    let prepared = store
        .prepare(env, b"Subject: hi\r\n\r\nhello\r\n", tenant())
        .await
        .unwrap();
    // What a restart would find (a message may be in a slot or a file: see spool/slots.rs).
    let on_disk = |id: &QueueId| {
        let (found, _) = super::spool::Spool::open(dir.path())
            .unwrap()
            .recover()
            .unwrap();
        found.iter().any(|r| &r.envelope.id == id)
    };
    assert!(on_disk(&id), "on disk once prepared");
    drop(prepared);
    assert!(state(&store, &id).is_none(), "never in the index");
    assert!(store.take(&tenant()).is_none(), "nothing to deliver");
    assert!(!on_disk(&id), "gone from the disk");
    drop(store);
    let again = open(dir.path()).await;
    assert!(again.get(&id).is_none(), "a restart does not bring it back");
}
