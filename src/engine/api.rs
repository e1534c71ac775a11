//! The queue API on the ops listener, used by `maildistiller queue …` (safe while the engine
//! runs: every change is one call to the engine's store, which writes it and updates its index).
//!
//! | request | effect |
//! |---|---|
//! | `GET /queue?tenant=T&state=S` | one line per message; `S` one of the [`State`] names (400 for any other) |
//! | `GET /queue/{id}` | envelope, per-recipient state, verdict, retry state |
//! | `POST /queue/{id}/suspend` | suspend it (`suspended`: not delivered until released) |
//! | `POST /queue/{id}/release` | release a `suspended` or `quarantined` message for delivery now |
//! | `POST /queue/{id}/flush` · `/delete` | retry it now · delete it (no DSN) |
//! | `POST /queue/flush` | retry every deferred message now (and un-mark down destinations) |
//!
//! A change the state table refuses (deleting a message being delivered, holding a quarantined
//! one, …) is `409` with the reason; nothing is written.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Router;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::store::{
    Change, ChangeError, Listed, QueueId, RcptOutcome, State, Status, Store, now_secs,
};

pub fn routes(store: Store) -> Router {
    Router::new()
        .route("/queue", get(list))
        .route("/queue/flush", post(flush_all))
        .route("/queue/{id}", get(show))
        .route("/queue/{id}/{action}", post(act))
        .with_state(store)
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
    let reason = match &l.progress.status {
        Status::Quarantined { reason, .. } => reason.clone(),
        _ => l.progress.error.clone(),
    };
    format!(
        "{}  {:<11} {:<10} {:>5} {:>8}  <{}> -> {}{}",
        l.env.id,
        l.state.as_str(),
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
    AxState(s): AxState<Store>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<String, (StatusCode, String)> {
    let state = match q.get("state") {
        None => None,
        Some(name) => Some(State::parse(name).ok_or_else(|| {
            let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
            (
                StatusCode::BAD_REQUEST,
                format!("unknown state {name:?}: one of {}\n", names.join(", ")),
            )
        })?),
    };
    let now = now_secs();
    let mut out = String::new();
    let mut n = 0;
    for l in s.list() {
        if q.get("tenant").is_some_and(|t| *t != l.env.tenant)
            || state.is_some_and(|st| st != l.state)
        {
            continue;
        }
        n += 1;
        let _ = writeln!(out, "{}", line(&l, now));
    }
    let _ = writeln!(out, "-- {n} message{}", if n == 1 { "" } else { "s" });
    Ok(out)
}

fn parse_id(id: &str) -> Result<QueueId, (StatusCode, String)> {
    QueueId::parse(id).ok_or((StatusCode::NOT_FOUND, format!("no such message: {id}\n")))
}

async fn show(
    AxState(s): AxState<Store>,
    Path(id): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let id = parse_id(&id)?;
    let l = s
        .get(&id)
        .ok_or((StatusCode::NOT_FOUND, format!("no such message: {id}\n")))?;
    let e = &l.env;
    let mut o = String::new();
    let _ = writeln!(o, "id:          {}", e.id);
    let _ = writeln!(o, "state:       {} (destination {})", l.state, l.dest);
    if let Status::Quarantined { reason, kinds } = &l.progress.status {
        let _ = writeln!(o, "quarantined: {reason}");
        let _ = writeln!(o, "findings:    {}", Status::kinds_text(kinds));
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
    let _ = writeln!(o, "attempts:    {}", l.progress.attempts);
    if l.progress.next > now_secs() {
        let _ = writeln!(o, "next try:    in {}", age(l.progress.next - now_secs()));
    }
    if !l.progress.error.is_empty() {
        let _ = writeln!(o, "last error:  {}", l.progress.error);
    }
    for (i, r) in e.rcpts.iter().enumerate() {
        let st = match l.progress.rcpts.get(i).cloned().flatten() {
            None => "pending".to_owned(),
            Some(RcptOutcome::Delivered { at }) => {
                format!("delivered {}", crate::smtp::date::rfc5322(at))
            }
            Some(RcptOutcome::Failed { reply }) => format!("failed: {reply}"),
            Some(RcptOutcome::Released { copy }) => format!("released on its own as {copy}"),
        };
        let _ = writeln!(o, "rcpt:        <{r}> {st}");
    }
    Ok(o)
}

async fn flush_all(AxState(s): AxState<Store>) -> String {
    format!("{} messages due now\n", s.flush(None))
}

/// The one place a refused change becomes an HTTP status.
fn refused(id: &QueueId, e: ChangeError) -> (StatusCode, String) {
    let status = match &e {
        ChangeError::NotFound => StatusCode::NOT_FOUND,
        ChangeError::Busy
        | ChangeError::Moved { .. }
        | ChangeError::Illegal(_)
        | ChangeError::NotPending => StatusCode::CONFLICT,
        ChangeError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{id}: {e}\n"))
}

async fn act(
    AxState(s): AxState<Store>,
    Path((id, action)): Path<(String, String)>,
) -> Result<String, (StatusCode, String)> {
    let id = parse_id(&id)?;
    let (change, done) = match action.as_str() {
        // `hold` is the word Postfix operators know (`postsuper -h`): accepted, not documented twice.
        "suspend" | "hold" => (Change::Suspend, "suspended (not delivered until released)"),
        "release" => (Change::Release, "released for delivery"),
        "delete" => (Change::Delete, "deleted"),
        "flush" => {
            return match s.flush(Some(&id)) {
                0 => Err((
                    StatusCode::CONFLICT,
                    format!("{id} is not waiting for a retry\n"),
                )),
                _ => Ok(format!("{id}: due now\n")),
            };
        }
        other => {
            return Err((
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?} (hold, release, flush, delete)\n"),
            ));
        }
    };
    let was = s.change(&id, change).await.map_err(|e| refused(&id, e))?;
    tracing::info!(id = %id, action, was = %was, "queue change by operator");
    Ok(format!("{id}: {done}\n"))
}
