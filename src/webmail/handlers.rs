//! The pages behind a session: the inbox, a message (its frame, attachments, original), the
//! actions on it, and the allow list. Every message request resolves the per-session token and
//! then checks visibility again where the message lives (here, or on the peer that holds it);
//! a message the user may not see is answered exactly like one that does not exist (404).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;
use super::auth::{current, for_change};
use super::mailbox::{self, ActionError, Filter, Row, View};
use super::pages;
use super::peer::action_status;
use super::render;
use super::sessions::{Current, MsgRef};

/// Deepest inbox page (bounds what a listing asks of every engine).
pub const MAX_PAGE: usize = 2000;
/// Longest search text.
const MAX_SEARCH: usize = 200;

fn q<'a>(m: &'a HashMap<String, String>, k: &str) -> &'a str {
    m.get(k).map_or("", String::as_str)
}

fn not_found(cur: &Current) -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::message_page(
            "Message not found",
            Some((&cur.viewer, &cur.csrf)),
            "This message is not here any more: it may have been delivered to your mailbox, \
             released or deleted.",
        ),
    )
        .into_response()
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// Texts of `?done=` after an action (fixed texts: nothing from the request is echoed).
fn flash(code: &str) -> Option<&'static str> {
    Some(match code {
        "released" => "The message was released and is on its way to your mailbox.",
        "deleted" => "The message was deleted.",
        "allowed" => "The sender was added to your allowed senders.",
        "allowed-partly" => {
            "The sender was added to your allowed senders on this server; some other servers \
             could not be reached, so mail arriving there may still be filtered for a while."
        }
        "added" => "Added.",
        "removed" => "Removed.",
        _ => return None,
    })
}

pub async fn inbox(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return to_login();
    };
    let snap = web.local.ops.config.load_full();
    let cfg = &snap.config.engine.webmail;
    let page_size = cfg.page_size as usize;
    let view = View::parse(q(&params, "view"));
    let search: String = q(&params, "q")
        .trim()
        .to_lowercase()
        .chars()
        .take(MAX_SEARCH)
        .collect();
    let page = q(&params, "page")
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, MAX_PAGE);
    let filter = Filter {
        view,
        search: search.clone(),
        limit: page * page_size,
    };
    let mut listing = mailbox::list(&web.local, &cur.viewer, &filter);
    let mut unreachable = 0;
    if let Some(client) = web.peer_client() {
        let mut set = tokio::task::JoinSet::new();
        for p in super::peer::peers(&web.local) {
            let (c, v, f) = (client.clone(), cur.viewer.clone(), filter.clone());
            set.spawn(async move { (p, c.list(p, &v, &f).await) });
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok((p, Ok(mut l))) => {
                    for r in &mut l.rows {
                        r.peer = Some(p);
                    }
                    listing.merge(l, filter.limit);
                }
                Ok((_, Err(e))) => {
                    unreachable += 1;
                    web.metrics.peer_errors.inc();
                    tracing::warn!(error = %e, "webmail: a peer could not list mail");
                }
                Err(_) => unreachable += 1,
            }
        }
    }
    let pages = listing.matching.div_ceil(page_size).max(1);
    let start = (page - 1) * page_size;
    let rows: Vec<(&Row, String)> = listing
        .rows
        .iter()
        .skip(start)
        .take(page_size)
        .map(|r| {
            let t = web.sessions.msg_token(
                &cur.token,
                &MsgRef {
                    peer: r.peer,
                    id: r.id.clone(),
                },
            );
            (r, t)
        })
        .collect();
    pages::inbox(&pages::Inbox {
        viewer: &cur.viewer,
        csrf: &cur.csrf,
        view,
        search: &search,
        page,
        pages,
        first: start + 1,
        listing: &listing,
        rows,
        flash: flash(q(&params, "done")),
        unreachable,
        outage_help: cfg.outage_help(),
    })
    .into_response()
}

/// A message the user may see: where it is, its row, and (when `raw`) its bytes.
async fn load(
    web: &Web,
    cur: &Current,
    token: &str,
    raw: bool,
) -> Result<(MsgRef, Row, Vec<u8>), Response> {
    let r = web
        .sessions
        .resolve(&cur.token, token)
        .ok_or_else(|| not_found(cur))?;
    match r.peer {
        None => {
            let row = mailbox::get(&web.local, &cur.viewer, &r.id).ok_or_else(|| not_found(cur))?;
            let data = if raw {
                web.local
                    .store
                    .read(&r.id)
                    .await
                    .map_err(|_| not_found(cur))?
            } else {
                Vec::new()
            };
            Ok((r, row, data))
        }
        Some(p) => {
            let client = web.peer_client().ok_or_else(|| not_found(cur))?;
            match client.message(p, &cur.viewer, &r.id).await {
                Ok(Some((row, data))) => Ok((r, row, data)),
                Ok(None) => Err(not_found(cur)),
                Err(e) => {
                    web.metrics.peer_errors.inc();
                    Err((
                        StatusCode::BAD_GATEWAY,
                        pages::message_page(
                            "Message not available right now",
                            Some((&cur.viewer, &cur.csrf)),
                            &format!("The server holding this message did not answer ({e}). Try again in a minute."),
                        ),
                    )
                        .into_response())
                }
            }
        }
    }
}

pub async fn message(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return to_login();
    };
    let max = max_render_size(&web);
    let (_, row, raw) = match load(&web, &cur, &token, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let view = if (raw.len() as u64) <= max {
        tokio::task::spawn_blocking(move || render::view(&raw))
            .await
            .ok()
    } else {
        None
    };
    let sender = mailbox::sender_of(&row);
    pages::message(&pages::Message {
        viewer: &cur.viewer,
        csrf: &cur.csrf,
        token: &token,
        row: &row,
        view: view.as_ref(),
        may_release: mailbox::may_release(&web.local, &cur.viewer, &row.kinds),
        remote: params.contains_key("remote"),
        text_only: params.contains_key("text"),
        sender: &sender,
    })
    .into_response()
}

/// `engine.webmail.max_render_size`: larger messages are listed and downloadable, not rendered.
fn max_render_size(web: &Web) -> u64 {
    web.local
        .ops
        .config
        .load()
        .config
        .engine
        .webmail
        .max_render_size
        .0
}

/// The CSP of the message frame: no script, nothing loaded but the message's own inline
/// images (and remote images when asked), sandboxed even when opened on its own.
fn body_csp(remote: bool) -> HeaderValue {
    let img = if remote {
        "data: https: http:"
    } else {
        "data:"
    };
    HeaderValue::from_str(&format!(
        "default-src 'none'; img-src {img}; style-src 'unsafe-inline'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
    ))
    .expect("static text")
}

pub async fn body(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let max = max_render_size(&web);
    let (_, _, raw) = match load(&web, &cur, &token, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let remote = params.contains_key("remote");
    let clean = if (raw.len() as u64) <= max {
        tokio::task::spawn_blocking(move || render::safe_html(&raw, remote))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let mut res = pages::body_document(&clean.unwrap_or_default()).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, body_csp(remote));
    h.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    // The message's links and images never learn where they were shown.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// A download: always `application/octet-stream` and `attachment`, so nothing from a message
/// is ever rendered by the browser as a page of ours.
fn download(name: &str, data: Vec<u8>) -> Response {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .filter(|c| !matches!(c, '"' | '\\'))
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_owned(),
            ),
        ],
        data,
    )
        .into_response()
}

pub async fn part(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path((token, n)): Path<(String, usize)>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return to_login();
    };
    let (_, _, raw) = match load(&web, &cur, &token, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || render::attachment(&raw, n))
        .await
        .ok()
        .flatten()
    {
        Some((name, data)) => download(&name, data),
        None => not_found(&cur),
    }
}

pub async fn raw(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return to_login();
    };
    match load(&web, &cur, &token, true).await {
        Ok((_, row, data)) => download(&format!("message-{}.eml", &row.id.as_str()[12..]), data),
        Err(r) => r,
    }
}

fn action_error(cur: &Current, e: &ActionError) -> Response {
    if matches!(e, ActionError::NotFound) {
        return not_found(cur);
    }
    (
        action_status(e),
        pages::message_page(
            "That did not work",
            Some((&cur.viewer, &cur.csrf)),
            &e.to_string(),
        ),
    )
        .into_response()
}

pub async fn act(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path((token, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cur = match for_change(&web, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(r) = web.sessions.resolve(&cur.token, &token) else {
        return not_found(&cur);
    };
    let result = match (action.as_str(), r.peer) {
        ("release", None) => mailbox::release(&web.local, &cur.viewer, &r.id).await,
        ("delete", None) => mailbox::delete(&web.local, &cur.viewer, &r.id).await,
        ("release" | "delete", Some(p)) => match web.peer_client() {
            Some(c) => c.act(p, &cur.viewer, &r.id, &action).await,
            None => Err(ActionError::NotFound),
        },
        ("allow", _) => return allow_sender(&web, &cur, &token).await,
        _ => return not_found(&cur),
    };
    web.metrics.action(&action, result.is_ok());
    match result {
        Ok(()) => Redirect::to(&format!("/inbox?done={action}d")).into_response(),
        Err(e) => action_error(&cur, &e),
    }
}

/// Adds `entry` to the lists of `users` on this engine and every peer; `false` when a peer
/// could not be told.
async fn write_allow(
    web: &Web,
    tenant: &str,
    users: &[String],
    entry: &str,
    add: bool,
) -> Result<bool, Response> {
    let dir = web.local.ops.config.load().config.engine.spool_dir.clone();
    for u in users {
        let (d, t, u2, e) = (dir.clone(), tenant.to_owned(), u.clone(), entry.to_owned());
        match tokio::task::spawn_blocking(move || crate::store::allow::change(&d, &t, &u2, &e, add))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err((StatusCode::BAD_REQUEST, e.to_string()).into_response()),
            Err(e) => {
                return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response());
            }
        }
    }
    let mut complete = true;
    if let Some(client) = web.peer_client() {
        for p in super::peer::peers(&web.local) {
            for u in users {
                if client.allow(p, tenant, u, entry, add).await.is_err() {
                    complete = false;
                }
            }
        }
    }
    Ok(complete)
}

async fn allow_sender(web: &Web, cur: &Current, token: &str) -> Response {
    let (_, row, _) = match load(web, cur, token, false).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let sender = mailbox::sender_of(&row);
    if sender.is_empty() {
        return action_error(
            cur,
            &ActionError::Forbidden("this message has no sender to allow"),
        );
    }
    let users = mailbox::allow_targets(&row, &cur.viewer);
    let result = write_allow(web, &cur.viewer.tenant, &users, &sender, true).await;
    web.metrics.action("allow", result.is_ok());
    match result {
        Ok(true) => Redirect::to("/inbox?done=allowed").into_response(),
        Ok(false) => Redirect::to("/inbox?done=allowed-partly").into_response(),
        Err(r) => r,
    }
}

pub async fn allowed(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(cur) = current(&web, &headers) else {
        return to_login();
    };
    let dir = web.local.ops.config.load().config.engine.spool_dir.clone();
    let entries = crate::store::allow::entries(&dir, &cur.viewer.tenant, &cur.viewer.address);
    pages::allowed(&cur.viewer, &cur.csrf, &entries, flash(q(&params, "done"))).into_response()
}

pub async fn allowed_change(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cur = match for_change(&web, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let add = q(&form, "remove") != "1";
    let users = vec![cur.viewer.address.clone()];
    match write_allow(&web, &cur.viewer.tenant, &users, q(&form, "entry"), add).await {
        Ok(_) => Redirect::to(if add {
            "/allowed?done=added"
        } else {
            "/allowed?done=removed"
        })
        .into_response(),
        Err(r) => r,
    }
}

pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("webmail.css"),
    )
        .into_response()
}

pub async fn fallback(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let cur = current(&web, &headers);
    (
        StatusCode::NOT_FOUND,
        pages::message_page(
            "Page not found",
            cur.as_ref().map(|c| (&c.viewer, c.csrf.as_str())),
            "There is no page at this address.",
        ),
    )
        .into_response()
}
