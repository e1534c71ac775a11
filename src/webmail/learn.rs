//! The two learning buttons of a message's page: "This is spam" (held or quarantined mail:
//! teaches it as spam; the message stays where it is, to be deleted or left to expire) and
//! "Not spam" (quarantined mail: releases it to the user's mailbox, then teaches it as ham).
//!
//! Both go through the engine's teacher (`engine::learn`: rspamd's controller, fuzzy hashes,
//! dedup, the user's hourly limit, the audit log under this engine's spool), for the message
//! wherever it sits in the cluster (a peer's message is read through the peer API). They show
//! only when the tenant's policy has `learning.controller`.
//!
//! This is the one place webmail reaches into the engine room: for the teacher, a library the
//! engine's report address uses too, never the running engine.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;
use super::auth::for_change;
use super::handlers::{action_error, load};
use super::mailbox::{self, ActionError};
use crate::engine::learn::{self, LearnError, Teller, original};
use crate::engine::scan::check::LearnAs;

/// Whether the buttons show for `tenant` under the config in force.
pub fn enabled(web: &Web, tenant: &str) -> bool {
    learn::config_for(&web.local.ops.config.load(), tenant).enabled()
}

/// Texts of `?done=` after a learning action (fixed texts).
pub fn flash(code: &str) -> Option<&'static str> {
    Some(match code {
        "reported" => {
            "Thank you: the message was reported as spam, and similar mail will be caught."
        }
        "notspam" => {
            "The message was released and is on its way to your mailbox; similar mail will be \
             let through."
        }
        "notspam-unlearnt" => {
            "The message was released and is on its way to your mailbox (it could not be \
             learnt from right now)."
        }
        _ => return None,
    })
}

async fn teach(
    web: &Web,
    tenant: &str,
    user: &str,
    class: LearnAs,
    raw: &[u8],
) -> Result<learn::Taught, LearnError> {
    let snap = web.local.ops.config.load_full();
    let cfg = learn::config_for(&snap, tenant);
    let who = Teller {
        source: "webmail",
        user: user.to_owned(),
        tenant: tenant.to_owned(),
        bulk: false,
    };
    let teacher = learn::teacher(&snap.config.engine.spool_dir);
    teacher
        .teach(&cfg, &who, class, &original::strip_ours(raw))
        .await
}

fn refused(e: &LearnError) -> ActionError {
    match e {
        LearnError::RateLimited(..) => ActionError::Conflict(
            "you have reported many messages this hour: try again later".into(),
        ),
        LearnError::Off => ActionError::NotFound,
        e => ActionError::Conflict(format!(
            "the message could not be learnt from right now ({e})"
        )),
    }
}

/// `POST /m/{token}/spam`.
pub async fn spam(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cur = match for_change(&web, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (_, _, raw) = match load(&web, &cur, &token, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let result = teach(
        &web,
        &cur.viewer.tenant,
        &cur.viewer.address,
        LearnAs::Spam,
        &raw,
    )
    .await;
    web.metrics.action("spam", result.is_ok());
    match result {
        Ok(t) => {
            tracing::info!(tenant = %cur.viewer.tenant, user = %cur.viewer.address, outcome = t.as_str(), "message reported as spam in webmail");
            Redirect::to("/inbox?done=reported").into_response()
        }
        Err(e) => action_error(&cur, &refused(&e)),
    }
}

/// `POST /m/{token}/notspam`: release (as the release button does), then learn as ham.
pub async fn not_spam(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cur = match for_change(&web, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (r, row, raw) = match load(&web, &cur, &token, true).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if row.quarantine.is_none() {
        return action_error(
            &cur,
            &ActionError::Conflict("this message is not quarantined".into()),
        );
    }
    let released = match r.peer {
        None => mailbox::release(&web.local, &cur.viewer, &r.id).await,
        Some(p) => match web.peer_client() {
            Some(c) => c.act(p, &cur.viewer, &r.id, "release").await,
            None => Err(ActionError::NotFound),
        },
    };
    if let Err(e) = released {
        web.metrics.action("notspam", false);
        return action_error(&cur, &e);
    }
    let learnt = teach(
        &web,
        &cur.viewer.tenant,
        &cur.viewer.address,
        LearnAs::Ham,
        &raw,
    )
    .await;
    web.metrics.action("notspam", learnt.is_ok());
    match learnt {
        Ok(_) => Redirect::to("/inbox?done=notspam").into_response(),
        Err(e) => {
            tracing::warn!(tenant = %cur.viewer.tenant, user = %cur.viewer.address, error = %e, "released, not learnt");
            Redirect::to("/inbox?done=notspam-unlearnt").into_response()
        }
    }
}
