//! `[engine.webmail]`: where the page listens, its certificate, sessions, sign-in limits, what
//! users may do, and the secret of the cluster-internal API. Every default is documented on its
//! field and given by the `Default` impl; [`WebmailConfig::check`] reports every problem with its
//! path before anything is bound.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{Bytes, Dur};
use super::validate::Checker;

/// `[engine.webmail]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebmailConfig {
    /// HTTPS listeners. Empty (the default): no page on this engine (it still answers its
    /// cluster peers when `peer_secret` is set).
    pub listen: Vec<SocketAddr>,
    /// Plain-HTTP listeners that only redirect to HTTPS (308). Default none.
    pub http_redirect_listen: Vec<SocketAddr>,
    /// The address users type, e.g. `https://mail.example.net`; redirects from HTTP go there.
    /// Default: one of the names configured here — `engine.hostname`, or the HTTPS listener's
    /// address (`localhost` too for a loopback one) — chosen by the request's `Host`, with the
    /// first HTTPS listener's port; a `Host` naming none of them gets the first. The request's
    /// own host text is never copied into the redirect.
    pub public_url: Option<String>,
    /// PEM certificate chain and key of the page. Required when `listen` is set. Relative paths
    /// are relative to the config file.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// When neither `tls_cert` nor `tls_key` exists, make a self-signed pair there at start
    /// (for `engine.hostname`, `localhost`, 127.0.0.1 and the listeners' addresses) and keep it:
    /// the loopback default's page works at first start. Browsers warn about it; its SHA-256
    /// fingerprint is in the log to compare with. Default false (production: a real
    /// certificate).
    pub tls_self_signed: bool,
    /// A session ends after this long without a request. Default 30 m.
    pub session_idle: Dur,
    /// A session ends this long after sign-in, however busy. Default 12 h.
    pub session_lifetime: Dur,
    /// Sessions kept in memory; when full, the least recently used one ends. Default 10 000.
    pub max_sessions: u32,
    /// Failed sign-ins for one address within `login_window` before the address is locked for
    /// `lockout`. Counted for unknown addresses too (no enumeration). Default 5.
    pub login_max_failures: u32,
    /// Failed sign-ins from one IP address (IPv6: its /64) within `login_window` before that
    /// address is locked. Default 20.
    pub login_max_failures_per_ip: u32,
    /// Default 15 m.
    pub login_window: Dur,
    /// Default 15 m.
    pub lockout: Dur,
    /// Password checks running at once (argon2 is slow on purpose; more wait). Default 4.
    pub max_concurrent_logins: u32,
    /// Messages per inbox page. Default 50.
    pub page_size: u32,
    /// Whether users may release their own quarantined mail (tenant admins always may).
    /// Default true. (A per-policy switch would live in `[policy.NAME]`; this is the default.)
    pub users_may_release: bool,
    /// Kinds of finding that only a tenant admin may release: a quarantined message with a
    /// finding of one of these kinds — any finding of its verdict, not only the one its reason
    /// names — is not releasable by its recipient. Kinds: `virus`, `attachment` (blocked type
    /// or extension), `encrypted` (encrypted archive), `macro`, `unscannable`, `dmarc`, `spam`,
    /// `listed`. Default `["virus"]`.
    pub admin_release_only: Vec<FindingKind>,
    /// HTTPS connections at once (the permit is taken before `accept`). Default 1000.
    pub max_connections: u32,
    /// A connection with no bytes read or written for this long is closed; TLS handshakes get
    /// the same time. Default 60 s.
    pub idle_timeout: Dur,
    /// Shared secret of the cluster-internal API on the ops listener (at least 32 characters,
    /// the same on every engine of the cluster). With it, the page shows a user's mail held on
    /// every engine of this engine's cluster. Unset (default): this engine's mail only.
    pub peer_secret: Option<String>,
    /// How long the page waits for a peer engine. Default 2 s.
    pub peer_timeout: Dur,
    /// Messages larger than this are listed and downloadable but not rendered. Default 25 MiB.
    pub max_render_size: Bytes,
    /// What the page tells users about writing to people while their mail server is down
    /// (this page sends no mail). Default: a short general text.
    pub outage_help: Option<String>,
}

impl Default for WebmailConfig {
    fn default() -> Self {
        WebmailConfig {
            listen: Vec::new(),
            http_redirect_listen: Vec::new(),
            public_url: None,
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            session_idle: Dur::secs(30 * 60),
            session_lifetime: Dur::secs(12 * 3600),
            max_sessions: 10_000,
            login_max_failures: 5,
            login_max_failures_per_ip: 20,
            login_window: Dur::secs(15 * 60),
            lockout: Dur::secs(15 * 60),
            max_concurrent_logins: 4,
            page_size: 50,
            users_may_release: true,
            admin_release_only: vec![FindingKind::Virus],
            max_connections: 1000,
            idle_timeout: Dur::secs(60),
            peer_secret: None,
            peer_timeout: Dur::secs(2),
            max_render_size: Bytes(25 << 20),
            outage_help: None,
        }
    }
}

/// What a finding is about, as a quarantined message records it for every finding of its
/// verdict and as `admin_release_only` names it. The engine's finding categories map onto these
/// (`engine::policy::finding::Category::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingKind {
    Virus,
    /// A blocked attachment type or extension.
    Attachment,
    /// An encrypted archive.
    Encrypted,
    /// A document with macros.
    Macro,
    /// Not scannable within its budget.
    Unscannable,
    Dmarc,
    /// A spam signal (scores, rules, DNS lists).
    Spam,
    /// On an allow or block list.
    Listed,
}

impl FindingKind {
    pub const ALL: [FindingKind; 8] = [
        FindingKind::Virus,
        FindingKind::Attachment,
        FindingKind::Encrypted,
        FindingKind::Macro,
        FindingKind::Unscannable,
        FindingKind::Dmarc,
        FindingKind::Spam,
        FindingKind::Listed,
    ];

    /// Its name in the config and in spool files.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Virus => "virus",
            FindingKind::Attachment => "attachment",
            FindingKind::Encrypted => "encrypted",
            FindingKind::Macro => "macro",
            FindingKind::Unscannable => "unscannable",
            FindingKind::Dmarc => "dmarc",
            FindingKind::Spam => "spam",
            FindingKind::Listed => "listed",
        }
    }

    pub fn parse(s: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The text shown instead of a compose button.
pub const DEFAULT_OUTAGE_HELP: &str = "Your organisation's mail server cannot receive mail right \
now, so this page shows the mail that is waiting for it. Sending is not available here: to reach \
people meanwhile, use the phone, a chat tool, or another mail account, and tell them your mail \
will arrive as soon as the server is back.";

impl WebmailConfig {
    /// `hostname`: `engine.hostname` (a name the HTTP redirect may send users to).
    pub fn check(&self, hostname: Option<&str>, k: &mut Checker) {
        let p = "engine.webmail";
        if !self.listen.is_empty() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            k.err(
                format!("{p}.tls_cert"),
                "the page is HTTPS only: give tls_cert and tls_key",
            );
        }
        if self.tls_self_signed && self.tls_cert.is_none() {
            k.err(
                format!("{p}.tls_self_signed"),
                "a self-signed certificate is made at tls_cert and tls_key: give both",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            k.err(
                format!("{p}.tls_key"),
                "give both tls_cert and tls_key, or neither",
            );
        }
        if self.listen.is_empty() && !self.http_redirect_listen.is_empty() {
            k.err(
                format!("{p}.http_redirect_listen"),
                "redirects need an HTTPS listener (engine.webmail.listen)",
            );
        }
        if !self.http_redirect_listen.is_empty()
            && self.public_url.is_none()
            && hostname.is_none()
            && self.listen.iter().all(|a| a.ip().is_unspecified())
        {
            k.err(
                format!("{p}.public_url"),
                "the HTTP redirect needs a name to send users to: set public_url \
                 (or engine.hostname, or listen on a specific address)",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self
            .listen
            .iter()
            .chain(&self.http_redirect_listen)
            .enumerate()
        {
            if a.port() != 0 && !seen.insert(*a) {
                k.err(format!("{p}.listen[{i}]"), format!("{a} is listed twice"));
            }
        }
        if let Some(u) = &self.public_url {
            let ok = u
                .strip_prefix("https://")
                .is_some_and(|h| !h.is_empty() && !h.contains(['/', '?', '#', ' ', '@']));
            if !ok {
                k.err(
                    format!("{p}.public_url"),
                    format!("{u:?} is not https://HOST[:PORT] (no path)"),
                );
            }
        }
        k.dur(
            &format!("{p}.session_idle"),
            self.session_idle,
            10_000,
            86_400,
        );
        k.dur(
            &format!("{p}.session_lifetime"),
            self.session_lifetime,
            self.session_idle.get().as_millis() as u64,
            30 * 86_400,
        );
        k.range(
            &format!("{p}.max_sessions"),
            self.max_sessions.into(),
            1,
            1_000_000,
        );
        k.range(
            &format!("{p}.login_max_failures"),
            self.login_max_failures.into(),
            1,
            1000,
        );
        k.range(
            &format!("{p}.login_max_failures_per_ip"),
            self.login_max_failures_per_ip.into(),
            1,
            100_000,
        );
        k.dur(
            &format!("{p}.login_window"),
            self.login_window,
            1000,
            86_400,
        );
        k.dur(&format!("{p}.lockout"), self.lockout, 1000, 86_400);
        k.range(
            &format!("{p}.max_concurrent_logins"),
            self.max_concurrent_logins.into(),
            1,
            256,
        );
        k.range(&format!("{p}.page_size"), self.page_size.into(), 5, 500);
        k.range(
            &format!("{p}.max_connections"),
            self.max_connections.into(),
            1,
            1_000_000,
        );
        k.dur(&format!("{p}.idle_timeout"), self.idle_timeout, 1000, 3600);
        k.dur(&format!("{p}.peer_timeout"), self.peer_timeout, 100, 60);
        k.range(
            &format!("{p}.max_render_size"),
            self.max_render_size.0,
            1024,
            1 << 30,
        );
        if let Some(s) = &self.peer_secret
            && (s.len() < 32 || s.chars().any(|c| c.is_control() || c == ' '))
        {
            k.err(
                format!("{p}.peer_secret"),
                "at least 32 characters without spaces or control characters",
            );
        }
    }

    /// The outage text in force.
    pub fn outage_help(&self) -> &str {
        self.outage_help.as_deref().unwrap_or(DEFAULT_OUTAGE_HELP)
    }
}
