//! Who is down, and what happens to the copies then: every [`RESHADOW_EVERY`] the watch
//!
//! 1. refreshes the gauges (copies held per primary, placed per peer, the log's size);
//! 2. takes over a primary that has been silent for `engine.takeover_after` when the cluster
//!    agrees ([`agreed`]): its copies are adopted into this engine's store — with their progress:
//!    quarantined stays quarantined, held stays held, delivered recipients are not sent again —
//!    and a `TAKEN` marker is kept for the primary to learn of when it returns;
//! 3. copies this engine's own unshadowed messages to a live peer (the re-shadow loop);
//! 4. now and then, lets the copy log compact.
//!
//! An operator can take over at once: `maildistiller queue takeover --from ENGINE`
//! (`POST /queue/takeover?from=ENGINE` on the ops listener, operator credential), refused while
//! that engine is still heard.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;

use super::log::{Entry, Rec};
use super::{
    PEER_DOWN_AFTER, PING_EVERY, Plan, RESHADOW_EVERY, RESHADOW_IN_FLIGHT, Replicator, Shared,
    link, plan, wire,
};
use crate::ops::esc;
use crate::store::{Progress, decode_record, now_secs};

/// A peer's view of whom it hears counts when it is at most this old.
const FRESH: Duration = Duration::from_secs(3 * PING_EVERY.as_secs());
/// The re-shadow loop waits this long after start: inventories first.
const SETTLE: Duration = Duration::from_secs(PEER_DOWN_AFTER.as_secs() + 2);

pub(super) async fn watch(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(RESHADOW_EVERY);
    let out = Arc::new(tokio::sync::Semaphore::new(RESHADOW_IN_FLIGHT));
    let copying: Arc<std::sync::Mutex<std::collections::HashSet<crate::store::QueueId>>> =
        Arc::default();
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = s.ops.shutdown.cancelled() => return,
        }
        n += 1;
        s.refresh_readiness();
        gauges(&s);
        auto(&s).await;
        reshadow(&s, &out, &copying);
        if n.is_multiple_of(30) {
            s.log.maintain().await;
        }
    }
}

fn gauges(s: &Shared) {
    s.metrics.held.reset();
    for (p, held, _, _) in s.log.per_primary() {
        s.metrics.held.with_label_values(&[&p]).set(held as i64);
    }
    let mut placed = vec![0i64; s.peers.len()];
    for &i in Shared::lock(&s.holders).values() {
        placed[i] += 1;
    }
    for (p, n) in s.peers.iter().zip(placed) {
        s.metrics.placed.with_label_values(&[&p.id]).set(n);
    }
    s.metrics.log_bytes.set(s.log.disk().1 as i64);
    let (commits, records) = s.log.commits();
    let m = &s.metrics;
    m.log_commits
        .inc_by(commits.saturating_sub(m.log_commits.get()));
    m.log_records
        .inc_by(records.saturating_sub(m.log_records.get()));
}

/// Whether the cluster agrees `primary` is down, having been silent here for `after`: see
/// [`agreement`]; each other engine's say is whether this engine heard it within `after`, and
/// what it last said (within [`FRESH`]) about whom it hears.
pub(super) fn agreed(s: &Shared, primary: &str, after: Duration) -> bool {
    let others = s.peers.iter().filter(|p| p.id != primary).map(|p| {
        let alive = s.last_heard(&p.id).is_some_and(|t| t.elapsed() < after);
        (alive, p.view(FRESH))
    });
    agreement(primary, after, others)
}

/// The rule: every other engine that is alive (heard within `after`) must have said, recently,
/// that it has not heard `primary` for `after` either (a missing word means "wait"). Engines
/// not heard themselves get no say; with none left (a cluster of two, or every other engine
/// silent too) this engine's own view decides — it cannot tell a partition from a death, and a
/// lost engine's mail must not wait for an operator forever.
pub fn agreement(
    primary: &str,
    after: Duration,
    others: impl Iterator<Item = (bool, Option<Vec<(String, u32)>>)>,
) -> bool {
    let after_ms = after.as_millis().min(u32::MAX as u128) as u32;
    for (alive, view) in others {
        if !alive {
            continue;
        }
        let Some(view) = view else {
            return false;
        };
        let silent = view
            .iter()
            .find(|(e, _)| e == primary)
            .is_none_or(|(_, ms)| *ms >= after_ms);
        if !silent {
            return false;
        }
    }
    true
}

/// Takes over every primary silent for `takeover_after` with the cluster's agreement.
async fn auto(s: &Arc<Shared>) {
    let after = s.ops.config.load().config.engine.takeover_after.get();
    for (primary, held, _, _) in s.log.per_primary() {
        if held == 0 || *primary == *s.me {
            continue;
        }
        let since = s.last_heard(&primary).unwrap_or(s.started);
        if since.elapsed() < after || !agreed(s, &primary, after) {
            continue;
        }
        let guard = s.takeover.lock().await;
        // Heard meanwhile (it came back while we waited for the lock): leave it.
        if s.last_heard(&primary).is_some_and(|t| t.elapsed() < after) {
            continue;
        }
        tracing::warn!(primary = %primary, silent_s = since.elapsed().as_secs(), "primary unreachable past takeover_after and agreed down: taking over its copies");
        adopt(s, &guard, &primary, None, "agreed").await;
    }
}

/// Adopts `primary`'s held copies (all, or only those of spools other than `keep`) into the
/// store and marks them taken over. The caller holds the takeover lock. Returns how many.
pub(super) async fn adopt(
    s: &Shared,
    _lock: &tokio::sync::MutexGuard<'_, ()>,
    primary: &Arc<str>,
    keep: Option<&Arc<str>>,
    by: &str,
) -> usize {
    let mut n = 0;
    for (id, e) in s.log.of_primary(primary) {
        let Entry::Held(h) = e else { continue };
        if keep.is_some_and(|k| *k == h.spool) {
            continue;
        }
        let key = (primary.clone(), id.clone());
        if s.store.get(&id).is_none() {
            let (data, progress) = match s.log.read(&key).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(id = %id, primary = %primary, error = %e, "cannot read a shadow copy to adopt it");
                    continue;
                }
            };
            let (env, message) = match decode_record(&data) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(id = %id, primary = %primary, error = %e, "shadow copy unreadable; left in the log");
                    continue;
                }
            };
            let progress = progress
                .filter(|p| p.rcpts.len() == env.rcpts.len())
                .unwrap_or_else(|| Progress::initial(&env));
            let dest = s.route(&env);
            let message = message.to_vec();
            if let Err(e) = s.store.adopt(env, &message, progress, dest).await {
                tracing::error!(id = %id, primary = %primary, error = %e, "cannot adopt a shadow copy (spool full?); will try again");
                break;
            }
        }
        if let Err(e) = s
            .log
            .append(Rec::Taken {
                key,
                when: now_secs(),
            })
            .await
        {
            tracing::error!(id = %id, error = %e, "cannot mark a copy taken over; will try again");
            break;
        }
        n += 1;
    }
    if n > 0 {
        s.metrics.takeovers.with_label_values(&[primary, by]).inc();
        s.metrics
            .taken_over
            .with_label_values(&[primary])
            .inc_by(n as u64);
        tracing::warn!(primary = %primary, messages = n, by, "took over a primary's copies: delivering them from this engine");
    }
    n
}

/// Why an operator's takeover was refused.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("{0} is not an engine of this engine's cluster (use its address from the fleet file)")]
    Unknown(String),
    #[error("{0} was heard {1:?} ago: it delivers its own mail (stop it first)")]
    Alive(String, Duration),
}

pub(super) async fn by_operator(s: &Arc<Shared>, from: &str) -> Result<usize, TakeoverError> {
    let Some(p) = s
        .peers
        .iter()
        .find(|p| p.id == from || p.addr.to_string() == from)
    else {
        return Err(TakeoverError::Unknown(from.to_owned()));
    };
    if let Some(t) = s.last_heard(&p.id)
        && t.elapsed() < PEER_DOWN_AFTER
    {
        return Err(TakeoverError::Alive(p.id.clone(), t.elapsed()));
    }
    let guard = s.takeover.lock().await;
    tracing::warn!(primary = %p.id, "operator takeover");
    Ok(adopt(s, &guard, &Arc::from(p.id.as_str()), None, "operator").await)
}

/// Copies this engine's messages that no live peer holds (at most [`RESHADOW_IN_FLIGHT`] at
/// once); sets the gauge of unshadowed messages.
fn reshadow(
    s: &Arc<Shared>,
    out: &Arc<tokio::sync::Semaphore>,
    copying: &Arc<std::sync::Mutex<std::collections::HashSet<crate::store::QueueId>>>,
) {
    if plan(&s.ops) == Plan::Single || s.started.elapsed() < SETTLE {
        return;
    }
    let holders: HashMap<_, _> = Shared::lock(&s.holders).clone();
    let mut missing = 0;
    for l in s.store.list() {
        let id = &l.env.id;
        if Shared::lock(&s.preparing).contains(id)
            || holders.get(id).is_some_and(|&i| link::holds(&s.peers[i]))
        {
            continue;
        }
        missing += 1;
        if Shared::lock(copying).contains(id) {
            continue;
        }
        let Ok(permit) = out.clone().try_acquire_owned() else {
            continue;
        };
        Shared::lock(copying).insert(id.clone());
        let (s, copying) = (s.clone(), copying.clone());
        tokio::spawn(async move {
            let id = l.env.id.clone();
            if let Ok(message) = s.store.read(&id).await {
                let frame = wire::copy_frame(&l.env, &message, Some(&l.progress));
                let deadline = tokio::time::Instant::now() + s.timeout();
                if let Ok(i) = s.place(&id, Arc::new(frame), deadline).await {
                    tracing::info!(id = %id, peer = %s.peers[i].id, "re-shadowed");
                }
            }
            Shared::lock(&copying).remove(&id);
            drop(permit);
        });
    }
    s.metrics.unshadowed_now.set(missing);
}

/// `/status`: this engine's shadow peers.
#[derive(Debug)]
pub(super) struct Status(pub Replicator);

impl crate::ops::StatusSection for Status {
    fn html(&self) -> String {
        let s = &self.0.inner;
        let snap = s.ops.config.load();
        let e = &snap.config.engine;
        let mut o = format!(
            "<h2>Shadow redundancy</h2><p>This engine: <code>{}</code>; redundancy <strong>{}</strong>, \
             on_shadow_failure {}, takeover_after {}.</p>\
             <table><tr><th>peer engine</th><th>shadow address</th><th>link</th>\
             <th>our copies there</th><th>its copies here</th><th>taken over from it</th><th>last heard</th></tr>",
            esc(&s.me),
            e.redundancy.as_str(),
            e.on_shadow_failure.as_str(),
            e.takeover_after,
        );
        let held: HashMap<String, (usize, usize)> = s
            .log
            .per_primary()
            .into_iter()
            .map(|(p, h, _, t)| (p.to_string(), (h, t)))
            .collect();
        let mut placed = vec![0usize; s.peers.len()];
        for &i in Shared::lock(&s.holders).values() {
            placed[i] += 1;
        }
        for (i, p) in s.peers.iter().enumerate() {
            let (up, down, full, _) = p.summary();
            let link = match (up, full, down) {
                (true, false, _) => "<span class=up>up</span>".to_owned(),
                (true, true, _) => "<span class=down>up, disk full</span>".to_owned(),
                (false, _, Some(d)) => format!("<span class=down>down {}s</span>", d.as_secs()),
                (false, _, None) => "<span class=down>never up</span>".to_owned(),
            };
            let (h, t) = held.get(&p.id).copied().unwrap_or_default();
            let heard = s.last_heard(&p.id).map_or("never".to_owned(), |t| {
                format!("{:.1}s ago", t.elapsed().as_secs_f64())
            });
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{link}</td><td>{}</td><td>{h}</td><td>{t}</td><td>{heard}</td></tr>",
                esc(&p.id),
                esc(&p.addr.to_string()),
                placed[i],
            );
        }
        let (segs, bytes) = s.log.disk();
        let _ = write!(
            o,
            "</table><p>Copy log: {segs} segment(s), {bytes} bytes.</p>"
        );
        o
    }
}

pub(super) fn routes(r: Replicator) -> Router {
    Router::new()
        .route("/queue/takeover", post(takeover_route))
        .with_state(r)
}

async fn takeover_route(
    State(r): State<Replicator>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let Some(from) = q.get("from") else {
        return (StatusCode::BAD_REQUEST, "from=ENGINE is required\n".into());
    };
    let started = Instant::now();
    match r.takeover(from).await {
        Ok(n) => (
            StatusCode::OK,
            format!(
                "took over {n} message(s) of {from} in {:.1}s: this engine delivers them now\n",
                started.elapsed().as_secs_f64()
            ),
        ),
        Err(e @ TakeoverError::Unknown(_)) => (StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ TakeoverError::Alive(..)) => (StatusCode::CONFLICT, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(ms: u32) -> Option<Vec<(String, u32)>> {
        Some(vec![("A".into(), ms), ("B".into(), 10)])
    }

    /// Who must agree before a shadow takes a silent primary's mail.
    #[test]
    fn the_cluster_must_agree_that_a_primary_is_down() {
        let after = Duration::from_secs(300);
        let none = std::iter::empty();
        assert!(
            agreement("A", after, none),
            "alone (a cluster of two): own view"
        );
        assert!(
            agreement("A", after, [(true, view(400_000))].into_iter()),
            "C agrees"
        );
        assert!(
            !agreement("A", after, [(true, view(2_000))].into_iter()),
            "C heard A two seconds ago: no takeover"
        );
        assert!(
            !agreement("A", after, [(true, None)].into_iter()),
            "C is alive but has not said: wait"
        );
        assert!(
            agreement("A", after, [(false, None), (false, view(1))].into_iter()),
            "C and D are silent too: nobody to ask, own view"
        );
        assert!(
            !agreement("A", after, [(false, None), (true, view(1))].into_iter()),
            "D is alive and hears A"
        );
        let never = Some(vec![("A".to_owned(), u32::MAX)]);
        assert!(
            agreement("A", after, [(true, never)].into_iter()),
            "never heard"
        );
        assert!(
            agreement("A", after, [(true, Some(Vec::new()))].into_iter()),
            "C does not know A at all"
        );
    }
}
