//! The ops HTTP listener. Plain HTTP on a private address (loopback by default). What it shows
//! to anyone who reaches it is load, topology and config versions, never secrets or mail;
//! everything else is the operator API, behind the operator credential (`auth.rs`).
//!
//! | path | answer | credential |
//! |---|---|---|
//! | `GET /metrics` | Prometheus text format | open |
//! | `GET /healthz` | 200 while the process runs (liveness) | open |
//! | `GET /readyz` | 200 when every listener is bound and config is loaded and no role holds readiness (an engine that would 451 every message for want of a shadow), else 503; body: load as JSON, with `unready` reasons | open |
//! | `GET /status` | HTML overview, no JavaScript | open |
//! | `POST /-/reload` | reload the config like SIGHUP; 200 with warnings or 400 with every error | operator |
//! | routes roles add (`/queue…`, `/-/engines…`, `/-/dns/…`) | see each role | operator |
//! | peer routes (engine to engine) | webmail actions on a colleague engine | the cluster's peer secret |

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use super::Ops;

pub fn router(ops: Arc<Ops>) -> Router {
    let mut operator = Router::new()
        .route("/-/reload", post(reload))
        .with_state(ops.clone());
    for e in ops.take_routes() {
        operator = operator.merge(e);
    }
    let operator = operator.route_layer(axum::middleware::from_fn_with_state(
        ops.clone(),
        super::auth::require_operator,
    ));
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/", get(status))
        .with_state(ops.clone())
        .merge(operator);
    for e in ops.take_peer_routes() {
        r = r.merge(e);
    }
    r
}

/// Serves until `ops.shutdown` is cancelled; in-flight requests finish.
pub async fn serve(ops: Arc<Ops>, listener: TcpListener) -> std::io::Result<()> {
    let token = ops.shutdown.clone();
    axum::serve(listener, router(ops))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let ready = ops.is_ready();
    let unready: Vec<String> = ops
        .unready_reasons()
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect();
    let body = format!(
        "{{\"ready\":{ready},\"unready\":[{}],\"draining\":{},\"sessions\":{},\"queue_depth\":{},\"config_version\":\"{}\"}}\n",
        unready.join(","),
        ops.shutdown.is_cancelled(),
        ops.sessions.load(Ordering::Relaxed),
        ops.queue_depth.load(Ordering::Relaxed),
        ops.config.load().version
    );
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn reload(State(ops): State<Arc<Ops>>) -> Response {
    let result = tokio::task::spawn_blocking(move || ops.reload()).await;
    match result {
        Ok(Ok(snap)) => {
            let mut body = format!("reloaded: version {}\n", snap.version);
            for w in &snap.warnings {
                let _ = writeln!(body, "warning: {w}");
            }
            (StatusCode::OK, body).into_response()
        }
        Ok(Err(errors)) => (
            StatusCode::BAD_REQUEST,
            format!("reload refused; previous config still in force\n{errors}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload task failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

async fn status(State(ops): State<Arc<Ops>>) -> Html<String> {
    let snap = ops.config.load_full();
    let t = &snap.topology;
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>maildistiller {role} — {silo}</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1rem}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #999;padding:.2rem .5rem;text-align:left}}.down{{color:#b00}}.up{{color:#070}}</style>\
         </head><body><h1>maildistiller: {role} in silo {silo}</h1>\
         <p>Config <code>{path}</code> version <strong>{version}</strong>; ready: {ready}; draining: {draining}.</p>\
         <p><a href=\"/metrics\">metrics</a> · <a href=\"/readyz\">readyz</a> · <a href=\"/healthz\">healthz</a></p>",
        role = esc(&super::role_label(ops.roles)),
        silo = esc(snap.local_silo_name()),
        path = esc(&snap.path.display().to_string()),
        version = esc(&snap.version),
        ready = ops.is_ready(),
        draining = ops.shutdown.is_cancelled(),
    );
    if !snap.warnings.is_empty() {
        o.push_str("<h2>Config warnings</h2><ul>");
        for w in &snap.warnings {
            let _ = write!(o, "<li>{}</li>", esc(w));
        }
        o.push_str("</ul>");
    }
    o.push_str("<h2>Topology</h2><table><tr><th>silo</th><th>cluster</th><th>region</th><th>engines</th></tr>");
    for s in &t.silos {
        for &c in &s.clusters {
            let cl = &t.clusters[c.0];
            let engines: Vec<String> = cl
                .engines
                .iter()
                .map(|e| {
                    let e = &t.engines[e.0];
                    let a = esc(&e.address.to_string());
                    // Engines that publish their ops listener link to their own status page.
                    match e.ops {
                        Some(ops) => format!("<a href=\"http://{ops}/status\">{a}</a>"),
                        None => a,
                    }
                })
                .collect();
            let _ = write!(
                o,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                if s.drain { " (drained)" } else { "" },
                esc(&cl.name),
                esc(&cl.region),
                engines.join(", ")
            );
        }
    }
    let _ = write!(o, "</table><p>{} tenants.</p>", t.tenants.len());
    for section in ops.status_sections() {
        o.push_str(&section.html());
    }
    o.push_str("</body></html>");
    Html(o)
}
