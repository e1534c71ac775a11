//! What the GeoDNS role adds to the ops listener: a `/status` section (silos, their edges'
//! probes, which silos each name set answers) and the drain API.
//!
//! | request | effect |
//! |---|---|
//! | `POST /-/dns/drain?silo=NAME` | the silo leaves every answer at the next query (kept across reloads) |
//! | `POST /-/dns/undrain?silo=NAME` | it comes back (if healthy and not drained in the config) |

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;

use super::state::{DnsState, FailOpen};
use crate::ops::StatusSection;

/// The `/status` section.
#[derive(Debug)]
pub(crate) struct StatusPage(pub Arc<DnsState>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl StatusSection for StatusPage {
    fn html(&self) -> String {
        let plan = self.0.plan();
        let probes = self.0.prober().targets();
        let mut o = String::new();
        let _ = write!(
            o,
            "<h2>GeoDNS: zone {}</h2><table><tr><th>silo</th><th>state</th><th>edges (SMTP probe)</th></tr>",
            esc(&plan.zone.name)
        );
        for (s, state) in plan.zone.silos.iter().zip(&plan.silo_state) {
            let edges: Vec<String> = s
                .edges
                .iter()
                .map(|e| match probes.iter().find(|p| p.addr == *e) {
                    Some(p) => format!(
                        "{} <span class={}>{}</span>{}",
                        e,
                        p.status.as_str(),
                        p.status.as_str(),
                        p.last_error
                            .as_ref()
                            .map(|x| format!(" ({})", esc(x)))
                            .unwrap_or_default()
                    ),
                    None => e.to_string(),
                })
                .collect();
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                state.as_str(),
                edges.join("<br>")
            );
        }
        o.push_str("</table><table><tr><th>names answered from</th><th>silos now</th></tr>");
        for (set, e) in plan.zone.sets.iter().zip(&plan.eligible) {
            let silos: Vec<&str> = e
                .silos
                .iter()
                .map(|&i| plan.zone.silos[usize::from(i)].name.as_str())
                .collect();
            let note = match e.fail_open {
                Some(FailOpen::AllDown) => " (all down: fail open)",
                Some(FailOpen::AllDrained) => " (all drained: fail open)",
                None => "",
            };
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}{}</td></tr>",
                esc(&set.label),
                esc(&silos.join(", ")),
                note
            );
        }
        o.push_str("</table>");
        o
    }
}

#[derive(Deserialize)]
struct SiloParam {
    silo: String,
}

/// The drain API, mounted on the ops listener.
pub(crate) fn routes(state: Arc<DnsState>) -> Router {
    Router::new()
        .route("/-/dns/drain", post(drain))
        .route("/-/dns/undrain", post(undrain))
        .with_state(state)
}

async fn drain(State(s): State<Arc<DnsState>>, Query(q): Query<SiloParam>) -> (StatusCode, String) {
    set(&s, &q.silo, true)
}

async fn undrain(
    State(s): State<Arc<DnsState>>,
    Query(q): Query<SiloParam>,
) -> (StatusCode, String) {
    set(&s, &q.silo, false)
}

fn set(s: &DnsState, silo: &str, drain: bool) -> (StatusCode, String) {
    match s.set_drain(silo, drain) {
        Ok(()) => (
            StatusCode::OK,
            format!(
                "silo {silo} {}\n",
                if drain { "drained" } else { "undrained" }
            ),
        ),
        Err(e) => (StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}
