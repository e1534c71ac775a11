//! The queue API on the ops listener, used by `maildistiller queue …` (safe while the engine
//! runs: every change goes through the engine's own index and spool).
//!
//! | request | effect |
//! |---|---|
//! | `GET /queue?tenant=T&state=S` | one line per message |
//! | `GET /queue/{id}` | envelope, per-recipient state, verdict, retry state |
//! | `POST /queue/{id}/hold` · `/release` · `/flush` · `/delete` | change one message |
//! | `POST /queue/flush` | retry every deferred message now (and un-mark down destinations) |

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::Shared;
use crate::store::index::{Listed, now_secs};
use crate::store::spool::{QueueId, RcptOutcome, Status};

pub fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/queue", get(list))
        .route("/queue/flush", post(flush_all))
        .route("/queue/{id}", get(show))
        .route("/queue/{id}/{action}", post(act))
        .with_state(shared)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn line(l: &Listed, now: u64) -> String {
    let reason = match &l.state.status {
        Status::Quarantined { reason } => reason.clone(),
        _ => l.state.error.clone(),
    };
    format!(
        "{}  {:<11} {:<10} {:>5} {:>8}  <{}> -> {}{}",
        l.env.id,
        l.display,
        l.env.tenant,
        age(now.saturating_sub(l.env.received)),
        l.env.size,
        l.env.from,
        l.env.rcpts.join(","),
        if reason.is_empty() {
            String::new()
        } else {
            format!("  ({reason})")
        }
    )
}

async fn list(
    AxState(s): AxState<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    let now = now_secs();
    let mut out = String::new();
    let mut n = 0;
    for l in s.queue.list() {
        if q.get("tenant").is_some_and(|t| *t != l.env.tenant)
            || q.get("state").is_some_and(|st| st != l.display)
        {
            continue;
        }
        n += 1;
        let _ = writeln!(out, "{}", line(&l, now));
    }
    let _ = writeln!(out, "-- {n} message{}", if n == 1 { "" } else { "s" });
    out
}

fn parse_id(id: &str) -> Result<QueueId, (StatusCode, String)> {
    QueueId::parse(id).ok_or((StatusCode::NOT_FOUND, format!("no such message: {id}\n")))
}

async fn show(
    AxState(s): AxState<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let id = parse_id(&id)?;
    let l = s
        .queue
        .get(&id)
        .ok_or((StatusCode::NOT_FOUND, format!("no such message: {id}\n")))?;
    let e = &l.env;
    let mut o = String::new();
    let _ = writeln!(o, "id:          {}", e.id);
    let _ = writeln!(o, "state:       {} (destination {})", l.display, l.dest);
    if let Status::Quarantined { reason } = &l.state.status {
        let _ = writeln!(o, "quarantined: {reason}");
    }
    let _ = writeln!(o, "tenant:      {}", e.tenant);
    let _ = writeln!(
        o,
        "received:    {} ({} ago)",
        crate::smtp::date::rfc5322(e.received),
        age(now_secs().saturating_sub(e.received))
    );
    let _ = writeln!(o, "session:     {}", e.session);
    let _ = writeln!(o, "client:      {} (helo {})", e.client, e.helo);
    let _ = writeln!(o, "from:        <{}>", e.from);
    let _ = writeln!(o, "subject:     {}", e.subject);
    let _ = writeln!(o, "size:        {}", e.size);
    let _ = writeln!(o, "verdict:     {}", e.verdict);
    let _ = writeln!(o, "attempts:    {}", l.state.attempts);
    if l.state.next > now_secs() {
        let _ = writeln!(o, "next try:    in {}", age(l.state.next - now_secs()));
    }
    if !l.state.error.is_empty() {
        let _ = writeln!(o, "last error:  {}", l.state.error);
    }
    for (i, r) in e.rcpts.iter().enumerate() {
        let st = match l.state.rcpts.get(i).cloned().flatten() {
            None => "pending".to_owned(),
            Some(RcptOutcome::Delivered { at }) => {
                format!("delivered {}", crate::smtp::date::rfc5322(at))
            }
            Some(RcptOutcome::Failed { reply }) => format!("failed: {reply}"),
        };
        let _ = writeln!(o, "rcpt:        <{r}> {st}");
    }
    Ok(o)
}

async fn flush_all(AxState(s): AxState<Arc<Shared>>) -> String {
    format!("{} messages due now\n", s.queue.flush(None))
}

async fn act(
    AxState(s): AxState<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<String, (StatusCode, String)> {
    let id = parse_id(&id)?;
    let conflict = |e: String| (StatusCode::CONFLICT, format!("{e}\n"));
    match action.as_str() {
        "hold" | "release" => {
            let current = s
                .queue
                .get(&id)
                .ok_or((StatusCode::NOT_FOUND, format!("no such message: {id}\n")))?;
            let status = match (action.as_str(), &current.state.status) {
                ("hold", Status::Queued) => Status::Hold,
                ("hold", _) => {
                    return Err(conflict(format!(
                        "{id} is {}: only queued mail can be held",
                        current.state.status.as_str()
                    )));
                }
                ("release", Status::Hold | Status::Quarantined { .. }) => Status::Queued,
                (_, _) => return Err(conflict(format!("{id} is not held or quarantined"))),
            };
            let was_quarantined = matches!(current.state.status, Status::Quarantined { .. });
            let state = s.queue.set_status(&id, status).map_err(conflict)?;
            s.spool.write_state(&id, &state).await.map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot persist: {e}\n"),
                )
            })?;
            tracing::info!(id = %id, action, was_quarantined, "queue change by operator");
            Ok(format!(
                "{id}: {}\n",
                if action == "hold" {
                    "on hold"
                } else {
                    "released for delivery"
                }
            ))
        }
        "flush" => match s.queue.flush(Some(&id)) {
            0 => Err(conflict(format!("{id} is not waiting for a retry"))),
            _ => Ok(format!("{id}: due now\n")),
        },
        "delete" => {
            s.queue.remove(&id).map_err(conflict)?;
            s.spool.remove(&id).await.map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot remove: {e}\n"),
                )
            })?;
            tracing::info!(id = %id, "message deleted by operator");
            Ok(format!("{id}: deleted\n"))
        }
        other => Err((
            StatusCode::NOT_FOUND,
            format!("unknown action {other:?} (hold, release, flush, delete)\n"),
        )),
    }
}
