//! The copy log on a real directory: what was acknowledged is there after a reopen, nothing
//! discarded comes back (compaction and deletion included), a torn tail is cut.

use super::*;

fn key(primary: &str, n: usize) -> Key {
    (
        Arc::from(primary),
        QueueId::parse(&format!("{n:024X}")).expect("an id"),
    )
}

fn copy(k: &Key, size: usize) -> Rec {
    Rec::Copy {
        key: k.clone(),
        spool: Arc::from("0123456789abcdef"),
        progress: None,
        data: vec![b'x'; size],
    }
}

fn held(log: &ShadowLog, primary: &str) -> Vec<QueueId> {
    let mut v: Vec<QueueId> = log
        .of_primary(primary)
        .into_iter()
        .filter(|(_, e)| matches!(e, Entry::Held(_)))
        .map(|(id, _)| id)
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn what_was_appended_is_there_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, problems) = ShadowLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert!(problems.is_empty());
    let (a, b, c) = (key("p1", 1), key("p1", 2), key("p2", 3));
    log.append(copy(&a, 100)).await.unwrap();
    log.append(copy(&b, 100)).await.unwrap();
    log.append(copy(&c, 100)).await.unwrap();
    let mut p =
        Progress::decode(b"status: queued\r\nattempts: 2\r\nrcpt: 0 pending\r\n\r\n").unwrap();
    p.error = "451 try later".into();
    log.append(Rec::Progress {
        key: b.clone(),
        progress: p.clone(),
    })
    .await
    .unwrap();
    log.append(Rec::Gone { key: a.clone() }).await.unwrap();
    log.append(Rec::Taken {
        key: c.clone(),
        when: 77,
    })
    .await
    .unwrap();
    drop(log);
    let (log, problems) = ShadowLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(held(&log, "p1"), vec![b.1.clone()]);
    let (data, progress) = log.read(&b).await.unwrap();
    assert_eq!(data, vec![b'x'; 100]);
    assert_eq!(progress, Some(p));
    assert!(matches!(log.get(&c), Some(Entry::Taken { when: 77, .. })));
    assert!(log.read(&a).await.is_err(), "a gone copy cannot be read");
}

/// A crash in the middle of a write leaves a torn record at the end: it is cut, what came
/// before stays.
#[tokio::test]
async fn a_torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = ShadowLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    let a = key("p1", 1);
    log.append(copy(&a, 1000)).await.unwrap();
    drop(log);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut torn = Vec::new();
    copy(&key("p1", 2), 1000).encode(&mut torn);
    torn.truncate(500);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&torn).unwrap();
    drop(f);
    // Not the last segment any more once reopened? The reopen starts a new one only after
    // replaying: this one is still the last, so it is cut.
    let (log, problems) = ShadowLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("cut"), "{problems:?}");
    assert_eq!(held(&log, "p1"), vec![a.1.clone()]);
    drop(log);
    let (_, problems) = ShadowLog::open(dir.path(), SEGMENT_BYTES).unwrap();
    assert!(problems.is_empty(), "cut for good: {problems:?}");
}

/// Small segments, most copies discarded, a few kept (held mail): compaction moves the few,
/// dead segments are deleted, disk stays small, and after a reopen the kept ones are exactly
/// there — no discarded copy reborn.
#[tokio::test]
async fn compaction_keeps_the_live_and_never_revives_the_dead() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 8 * 1024;
    let (log, _) = ShadowLog::open(dir.path(), seg).unwrap();
    let mut kept = Vec::new();
    for n in 0..400 {
        let k = key("p1", n);
        log.append(copy(&k, 300)).await.unwrap();
        if n % 50 == 7 {
            kept.push(k.1.clone());
        } else if n % 3 == 0 {
            // Some discarded at once, some later (their tombstones land in later segments).
            log.append(Rec::Gone { key: k }).await.unwrap();
        }
    }
    for n in 0..400 {
        if n % 50 != 7 && n % 3 != 0 {
            log.append(Rec::Gone { key: key("p1", n) }).await.unwrap();
        }
    }
    for _ in 0..50 {
        log.maintain().await;
    }
    let (segments, bytes) = log.disk();
    assert!(
        bytes < 4 * seg,
        "dead segments deleted: {segments} segments, {bytes} bytes"
    );
    kept.sort();
    assert_eq!(held(&log, "p1"), kept);
    for id in &kept {
        let (data, _) = log.read(&("p1".into(), id.clone())).await.unwrap();
        assert_eq!(data.len(), 300);
    }
    drop(log);
    let (log, problems) = ShadowLog::open(dir.path(), seg).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        held(&log, "p1"),
        kept,
        "exactly the kept copies after a reopen"
    );
}
