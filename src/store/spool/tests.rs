//! Tests of the file spool (messages stored as files: `Spool::open_files_only`).

use super::*;

fn envelope() -> Envelope {
    test_envelope(1)
}

/// A message stored by this version lands in its shard; a spool written by a version
/// without shards (files directly in q/) is moved into shards at open and recovered whole.
#[tokio::test]
async fn messages_live_in_shards_and_a_flat_spool_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_files_only(dir.path()).unwrap();
    let (a, b) = (envelope(), envelope());
    spool.store(&a, b"hello").await.unwrap();
    spool.store(&b, b"world").await.unwrap();
    spool
        .write_state(&b.id, &Progress::initial(&b))
        .await
        .unwrap();
    let sharded = spool.msg_path(&a.id);
    assert!(sharded.exists());
    assert_eq!(
        sharded.parent().unwrap().file_name().unwrap().to_str(),
        Some(shard(&a.id).1)
    );
    // As an older version would have left them: q/<id>.msg, q/<id>.st.
    let q = dir.path().join("q");
    for p in [
        spool.msg_path(&a.id),
        spool.msg_path(&b.id),
        spool.st_path(&b.id),
    ] {
        std::fs::rename(&p, q.join(p.file_name().unwrap())).unwrap();
    }
    drop(spool);
    let spool = Spool::open_files_only(dir.path()).unwrap();
    let (found, problems) = spool.recover().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let ids: Vec<&QueueId> = found.iter().map(|r| &r.envelope.id).collect();
    let mut want = vec![&a.id, &b.id];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(spool.read_message(&a.id).await.unwrap(), b"hello");
    assert!(
        spool.st_path(&b.id).exists(),
        "state moved with its message"
    );
    let flat: Vec<_> = std::fs::read_dir(&q)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .collect();
    assert!(flat.is_empty(), "nothing left directly in q/");
}

/// Waits (bounded) until the pool holds `n` files: a retired file joins it after a
/// directory sync on another task.
async fn pooled(spool: &Spool, n: usize) {
    for _ in 0..500 {
        if spool.pooled() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("pool has {} files, want {n}", spool.pooled());
}

/// A delivered message's file is written over by the next message (same inode, no new
/// allocation), which reads back exactly, even when shorter than the old one.
#[tokio::test]
async fn a_retired_file_carries_the_next_message() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_files_only(dir.path()).unwrap();
    let (a, b) = (envelope(), envelope());
    spool.store(&a, &[b'x'; 5000]).await.unwrap();
    spool
        .write_state(&a.id, &Progress::initial(&a))
        .await
        .unwrap();
    let ino = std::fs::metadata(spool.msg_path(&a.id)).unwrap().ino();
    spool.retire(&a.id).await.unwrap();
    assert!(!spool.msg_path(&a.id).exists() && !spool.st_path(&a.id).exists());
    pooled(&spool, 1).await;
    spool.store(&b, b"short").await.unwrap();
    assert_eq!(spool.pooled(), 0);
    assert_eq!(std::fs::metadata(spool.msg_path(&b.id)).unwrap().ino(), ino);
    assert_eq!(spool.read_message(&b.id).await.unwrap(), b"short");
    let (found, problems) = spool.recover().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].envelope.id, b.id);
    assert!(
        std::fs::read_dir(dir.path().join("free"))
            .unwrap()
            .next()
            .is_none(),
        "the pooled file left free/"
    );
}

/// The pool survives a restart; a pooled name that a queued message still has is dropped,
/// and a file bigger than the bound is deleted, not pooled.
#[tokio::test]
async fn the_pool_is_refilled_at_open_within_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_files_only(dir.path()).unwrap();
    let (a, big, queued) = (envelope(), envelope(), envelope());
    let huge = vec![b'y'; POOL_FILE_MAX as usize + 1];
    spool.store(&a, b"a").await.unwrap();
    spool.store(&big, &huge).await.unwrap();
    spool.store(&queued, b"q").await.unwrap();
    spool.retire(&a.id).await.unwrap();
    spool.retire(&big.id).await.unwrap();
    assert!(!spool.msg_path(&big.id).exists());
    pooled(&spool, 1).await;
    // As a crash without a journal might leave it: the queued message's name in free/ too.
    let free = dir.path().join("free");
    std::fs::write(free.join(format!("{}.msg", queued.id)), b"stale").unwrap();
    drop(spool);
    let spool = Spool::open_files_only(dir.path()).unwrap();
    assert_eq!(spool.pooled(), 1);
    let names: Vec<String> = std::fs::read_dir(&free)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![format!("{}.msg", a.id)]);
    assert_eq!(spool.read_message(&queued.id).await.unwrap(), b"q");
}

/// A file in q/ whose envelope names another message is reported, not delivered.
#[tokio::test]
async fn a_name_that_does_not_match_its_message_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open_files_only(dir.path()).unwrap();
    let (a, ghost) = (envelope(), envelope());
    spool.store(&a, b"a").await.unwrap();
    std::fs::copy(spool.msg_path(&a.id), spool.msg_path(&ghost.id)).unwrap();
    let (found, problems) = spool.recover().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].envelope.id, a.id);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&ghost.id.to_string()), "{problems:?}");
}
