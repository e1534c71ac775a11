//! Webmail: a tenant's users read their held and quarantined mail over HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Serving, Shared};
use crate::config::validate::Checker;

/// `[engine.webmail]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebmailConfig {
    /// HTTPS listeners. Empty: webmail off.
    pub listen: Vec<SocketAddr>,
}

impl WebmailConfig {
    pub fn check(&self, k: &mut Checker) {
        if !self.listen.is_empty() {
            k.err(
                "engine.webmail.listen",
                "webmail is not built yet (issue #7)",
            );
        }
    }
}

/// Binds the webmail listeners when configured.
pub async fn bind(_shared: &Arc<Shared>) -> std::io::Result<Option<Serving>> {
    Ok(None)
}
