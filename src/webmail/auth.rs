//! Sign-in, sign-out and the session every other request needs.
//!
//! Sign-in: the form carries a random value that must equal the `__Host-mdw-login` cookie set
//! with the form (login CSRF); the limiter is asked first (per address and per network; the
//! lockout is told plainly); the password is checked with argon2 on a blocking thread, at most
//! `max_concurrent_logins` at once; an unknown address is checked against a dummy hash with the
//! same parameters, and gets the same answer as a wrong password. Success starts a session
//! (`__Host-mdw` cookie: `Secure; HttpOnly; SameSite=Strict; Path=/`).
//!
//! Every state-changing request (POST, sign-in included) must come from one of our own pages: a
//! browser's `Origin` must be this site's (`https://` and the request's `Host`, or
//! `engine.webmail.public_url`; `Origin: null` is refused), `Sec-Fetch-Site: cross-site` is
//! refused, and the form must carry the session's CSRF token (sign-in: the form's own token).
//! A request without `Origin` (not a browser, or a browser that sends none on same-origin
//! posts) is judged by its token alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;
use super::pages;
use super::secret::{self, ct_eq};
use super::serve::ClientAddr;
use super::sessions::{Current, Locked, SignInLimits, Viewer};

pub const SESSION_COOKIE: &str = "__Host-mdw";
pub const LOGIN_COOKIE: &str = "__Host-mdw-login";
/// Longest address and password looked at.
const MAX_ADDRESS: usize = 320;
const MAX_PASSWORD: usize = 1024;
/// How long a sign-in waits for a free password-check slot before "busy".
const LOGIN_QUEUE_WAIT: Duration = Duration::from_secs(10);

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"
    ))
    .expect("cookie values are hex")
}

fn with_cookies(mut r: Response, cookies: &[HeaderValue]) -> Response {
    for c in cookies {
        r.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    r
}

/// The session of a request, checked against the config in force: the user must still exist
/// with the same password hash (a removed user or a changed password ends the session).
pub fn current(web: &Web, headers: &HeaderMap) -> Option<Current> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let snap = web.local.ops.config.load();
    let cfg = &snap.config.engine.webmail;
    web.sessions.get(
        &token,
        cfg.session_idle.get(),
        cfg.session_lifetime.get(),
        |v: &Viewer, hash: &str| {
            snap.config
                .tenants
                .iter()
                .find(|t| t.id == v.tenant)?
                .users
                .iter()
                .find(|u| u.address.eq_ignore_ascii_case(&v.address) && u.password_hash == hash)
                .map(|u| u.admin)
        },
    )
}

/// Whether a state-changing request may come from where the browser says it comes from: no
/// `Sec-Fetch-Site: cross-site`, and an `Origin`, when sent, that is this site's: `https://`
/// with the request's own `Host` (what the browser connected to), or `public_url`. `null`
/// (sandboxed frames, `data:` pages, some redirects) is never ours.
pub fn same_origin(web: &Web, headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim);
    let public = web.public_url();
    let ours = |o: &str| {
        host.is_some_and(|h| !h.is_empty() && o.eq_ignore_ascii_case(&format!("https://{h}")))
            || public
                .as_deref()
                .is_some_and(|p| o.eq_ignore_ascii_case(p.trim_end_matches('/')))
    };
    ours(origin)
}

/// For a state-changing request: the session, its CSRF token matching the form's, and a
/// browser origin that is ours ([`same_origin`]). Otherwise the answer to send.
// The error is the handler's finished answer; boxing it would only add an allocation per refusal.
#[allow(clippy::result_large_err)]
pub fn for_change(
    web: &Web,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Current, Response> {
    let foreign = !same_origin(web, headers);
    let Some(cur) = current(web, headers) else {
        return Err(Redirect::to("/login").into_response());
    };
    let sent = form.get("csrf").map_or("", String::as_str);
    if foreign || !web.sessions.check_csrf(&cur, sent) {
        web.metrics.csrf_refused.inc();
        let page = pages::message_page(
            "This form has expired",
            Some((&cur.viewer, &cur.csrf)),
            "The request was refused because it did not come from a current page of this site. \
             Go back, reload the page and try again.",
        );
        return Err((StatusCode::FORBIDDEN, page).into_response());
    }
    Ok(cur)
}

pub async fn index(State(web): State<Arc<Web>>, headers: HeaderMap) -> Redirect {
    match current(&web, &headers) {
        Some(_) => Redirect::to("/inbox"),
        None => Redirect::to("/login"),
    }
}

pub async fn login_form(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if current(&web, &headers).is_some() {
        return Redirect::to("/inbox").into_response();
    }
    let pre = secret::token(16);
    let info = q.contains_key("bye").then_some("You are signed out.");
    with_cookies(
        pages::login(&pre, None, info, "").into_response(),
        &[set_cookie(LOGIN_COOKIE, &pre, None)],
    )
}

fn minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

pub async fn login(
    State(web): State<Arc<Web>>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    let address: String = get("address")
        .trim()
        .to_lowercase()
        .chars()
        .take(MAX_ADDRESS)
        .collect();
    let password = get("password");
    // A fresh form value for whatever page comes next.
    let pre = secret::token(16);
    let page = |code: StatusCode, error: &str| {
        with_cookies(
            (code, pages::login(&pre, Some(error), None, &address)).into_response(),
            &[set_cookie(LOGIN_COOKIE, &pre, None)],
        )
    };
    let sent_pre = get("pre");
    let cookie_pre = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if sent_pre.is_empty()
        || !ct_eq(sent_pre.as_bytes(), cookie_pre.as_bytes())
        || !same_origin(&web, &headers)
    {
        web.metrics.login("csrf");
        return page(
            StatusCode::FORBIDDEN,
            "The sign-in form had expired. Please try again.",
        );
    }
    let ip = client.0.ip();
    if let Err(l) = web.limiter.check(&address, ip) {
        web.metrics.login("locked");
        let text = match l {
            Locked::Account(d) => format!(
                "Too many failed sign-ins for this address. It is locked for {} more minute(s); \
                 try again later or ask your administrator.",
                minutes(d)
            ),
            Locked::Network(d) => format!(
                "Too many failed sign-ins from your network. Sign-in from it is blocked for {} \
                 more minute(s).",
                minutes(d)
            ),
        };
        return page(StatusCode::TOO_MANY_REQUESTS, &text);
    }
    let snap = web.local.ops.config.load_full();
    let cfg = snap.config.engine.webmail.clone();
    // The user, if the address is one: (tenant, admin, hash).
    let user = snap
        .topology
        .tenant_for_address(&address)
        .and_then(|t| snap.config.tenants.iter().find(|c| c.id == t.id.0))
        .and_then(|t| {
            t.users
                .iter()
                .find(|u| u.address.eq_ignore_ascii_case(&address))
                .map(|u| (t.id.clone(), u.admin, u.password_hash.clone()))
        });
    let Ok(slot) = tokio::time::timeout(LOGIN_QUEUE_WAIT, web.logins.clone().acquire_owned()).await
    else {
        web.metrics.login("busy");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is busy. Please try again in a moment.",
        );
    };
    let dummy = web.dummy_hash(&snap);
    let pw: String = password.chars().take(MAX_PASSWORD).collect();
    let hash = user.as_ref().map(|u| u.2.clone());
    let ok = tokio::task::spawn_blocking(move || {
        let ok = secret::verify(&pw, hash.as_deref(), &dummy);
        drop(slot);
        ok
    })
    .await
    .unwrap_or(false);
    let (true, Some((tenant, admin, hash))) = (ok, user) else {
        web.limiter.failed(
            &address,
            ip,
            &SignInLimits {
                per_account: cfg.login_max_failures,
                per_network: cfg.login_max_failures_per_ip,
                window: cfg.login_window.get(),
                lockout: cfg.lockout.get(),
            },
        );
        web.metrics.login("failed");
        tracing::info!(client = %ip, "webmail sign-in failed");
        return page(
            StatusCode::UNAUTHORIZED,
            "The address or password is not right. Check them and try again.",
        );
    };
    web.limiter.succeeded(&address);
    web.metrics.login("ok");
    tracing::info!(client = %ip, tenant = %tenant, user = %address, admin, "webmail sign-in");
    let token = web.sessions.create(
        Viewer {
            tenant,
            address,
            admin,
        },
        hash,
    );
    with_cookies(
        Redirect::to("/inbox").into_response(),
        &[
            set_cookie(SESSION_COOKIE, &token, None),
            set_cookie(LOGIN_COOKIE, "", Some(0)),
        ],
    )
}

pub async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let cur = match for_change(&web, &headers, &form) {
        Ok(c) => c,
        Err(r) => return r,
    };
    web.sessions.remove(&cur.token);
    with_cookies(
        Redirect::to("/login?bye=1").into_response(),
        &[set_cookie(SESSION_COOKIE, "", Some(0))],
    )
}
