//! The command line: every subcommand of the `maildistiller` binary, parsed with clap (the only
//! module that names clap), and the one place where a failure becomes an exit code
//! ([`Failure::exit_code`]).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the command line, dispatch, [`Failure`] and its exit codes |
//! | `run.rs` | running roles: bind every listener, serve, drain on SIGTERM |
//! | `queue.rs` | `maildistiller queue …`: a running engine's queue through its ops listener |
//! | `learn.rs` | `maildistiller learn --spam\|--ham PATH…`: an operator's bulk training; `--audit` |
//! | `user.rs` | `maildistiller user add|passwd|remove`: webmail users in the tenant's file |
//! | `client.rs` | the small blocking HTTP client of `queue` and `intel` |
//!
//! Exit codes (sysexits.h): 0 clean exit; 1 no route (`route`) or a runtime failure; 64 bad
//! command line or config; 69 a requested role or the ops listener is not available; 71 a
//! listener could not be bound; 75 the shutdown grace period expired with sessions still open.

pub mod client;
mod learn;
mod queue;
mod run;
pub mod user;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{ConfigErrors, RoleSet};
use crate::explain;
use crate::node;
use crate::snapshot::Snapshot;
use crate::store::State;

/// Why a command did not succeed, by cause. Each variant says what the operator must do; its
/// exit code is given in one place, [`Failure::exit_code`].
#[derive(Debug)]
pub enum Failure {
    /// The command line or an argument is wrong (the message says which). 64.
    Usage(String),
    /// The config file does not validate: every error, with its path. 64.
    Config { path: PathBuf, errors: ConfigErrors },
    /// Something asked for is not there: a role not in this build, an ops listener that does
    /// not answer. 69.
    Unavailable(String),
    /// A listener (or the spool behind it) could not be set up. 71.
    Bind {
        role: &'static str,
        error: std::io::Error,
    },
    /// The answer is "no": `route` found no route, the engine refused a queue request. The
    /// output already says why. 1.
    Refused,
    /// Anything else that went wrong at run time. 1.
    Runtime(String),
    /// SIGTERM's grace period ran out with sessions still open. 75.
    GraceExpired,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) | Failure::Config { .. } => 64,
            Failure::Unavailable(_) => 69,
            Failure::Bind { .. } => 71,
            Failure::GraceExpired => 75,
            Failure::Refused | Failure::Runtime(_) => 1,
        }
    }

    /// Says what went wrong on stderr (a role's bind failure is also logged, by `run`).
    fn report(&self) {
        match self {
            Failure::Usage(m) | Failure::Unavailable(m) | Failure::Runtime(m) => {
                eprintln!("maildistiller: {m}")
            }
            Failure::Config { path, errors } => {
                eprintln!(
                    "maildistiller: {} has {} error{}:",
                    path.display(),
                    errors.0.len(),
                    if errors.0.len() == 1 { "" } else { "s" }
                );
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
            }
            Failure::Bind { role, error } => {
                eprintln!("maildistiller: cannot bind the {role} role's listeners: {error}")
            }
            Failure::Refused | Failure::GraceExpired => {}
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "maildistiller",
    version,
    about = "Inbound email hygiene: GeoDNS, an SMTP-aware edge, and scanning engines with a durable spool",
    long_about = "Inbound email hygiene, one binary with roles.\n\n\
        Run a node:    maildistiller --role edge --config /etc/maildistiller/maildistiller.toml\n\
        Try it all:    maildistiller --role all --config config/maildistiller.toml\n\
        Check config:  maildistiller check --config FILE\n\n\
        Signals: SIGHUP reloads the config (a broken file is refused and the old one keeps \
        serving); SIGTERM or SIGINT drains (stop accepting, let sessions finish within \
        ops.grace_period).\n\n\
        Exit codes: 0 ok; 1 no route / runtime failure; 64 bad command line or config; \
        69 role not available; 71 cannot bind a listener; 75 grace period expired."
)]
pub struct Cli {
    /// Roles to run: edge, dns, engine, or all (repeat or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',', global = true)]
    role: Vec<Role>,

    /// Configuration file.
    #[arg(
        long,
        short,
        env = "MAILDISTILLER_CONFIG",
        default_value = "config/maildistiller.toml",
        global = true
    )]
    config: PathBuf,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `maildistiller=debug`. RUST_LOG wins.
    #[arg(long, default_value = "info", global = true)]
    log_level: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the config without binding anything; print what would run. Exit 0 or 64.
    Check,
    /// Explain where mail for a recipient from a client would be processed.
    Route {
        /// Recipient address, e.g. bob@acme.example.
        #[arg(long)]
        rcpt: String,
        /// The sending MTA's address.
        #[arg(long)]
        client: IpAddr,
        /// The silo whose edge received the connection (default: node.silo).
        #[arg(long)]
        edge_silo: Option<String>,
        /// What if this is down: a silo, `silo/cluster`, or an engine address. Repeatable.
        #[arg(long)]
        down: Vec<String>,
    },
    /// Look at and change a running engine's queue (through its ops listener).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// The engine's ops listener (default: ops.listen from the config).
        #[arg(long)]
        ops: Option<std::net::SocketAddr>,
    },
    /// List every silo's egress ranges and the SPF record generated from them.
    Egress,
    /// Show where an address is: country, coordinates used, nearest silos.
    Geo {
        /// An IPv4 or IPv6 address.
        ip: IpAddr,
    },
    /// Teach rspamd from a corpus: message files, mboxes, directories (bulk learning, audited).
    Learn(learn::LearnArgs),
    /// The operator's intelligence feed, fleet-wide at once (through a node's ops listener and
    /// the shared store): block or allow a fingerprint, sender, domain or network.
    Intel {
        #[command(subcommand)]
        action: IntelAction,
        /// The node's ops listener (default: ops.listen from the config).
        #[arg(long)]
        ops: Option<std::net::SocketAddr>,
    },
    /// Manage webmail users (edits the tenant's config file; reload to apply).
    User {
        #[command(subcommand)]
        action: user::UserCommand,
    },
    /// Explain which silo GeoDNS answers a name with for a client, and why.
    DnsExplain {
        /// The name asked, e.g. mx.in.example.net.
        name: String,
        /// The address the query comes from (the resolver, or the sending MTA itself).
        #[arg(long)]
        client: IpAddr,
        /// The EDNS Client Subnet the resolver sends, e.g. 81.2.69.0/24.
        #[arg(long)]
        ecs: Option<String>,
        /// Query type: A, AAAA, MX, TXT, ...
        #[arg(long = "type", default_value = "A")]
        qtype: String,
        /// Assume this silo's edges are down. Repeatable.
        #[arg(long)]
        down: Vec<String>,
    },
}

/// A `--state` value: one of the store's state names.
fn parse_state(s: &str) -> Result<State, String> {
    State::parse(s).ok_or_else(|| {
        let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
        format!("one of {}", names.join(", "))
    })
}

#[derive(Subcommand, Debug)]
pub enum QueueAction {
    /// One line per message: id, state, tenant, age, size, envelope, reason.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// queued, deferred, delivering, held (its destination is down), suspended (by an
        /// operator: `queue suspend`), quarantined
        #[arg(long, value_parser = parse_state)]
        state: Option<State>,
    },
    /// Envelope, per-recipient state, verdict and retry state of one message.
    Show { id: String },
    /// Retry now: one message, or every deferred message (and re-probe down destinations).
    Flush { id: Option<String> },
    /// Suspend a waiting message (queued, deferred or held): not delivered until released.
    #[command(alias = "hold")]
    Suspend { id: String },
    /// Release a suspended or quarantined message for delivery now.
    Release { id: String },
    /// Delete a message from the queue (no DSN).
    Delete { id: String },
    /// Deliver from this engine the shadow copies it holds of a lost engine's mail, now
    /// (cluster redundancy; otherwise done after `engine.takeover_after` with the cluster's
    /// agreement). Refused while that engine is still heard.
    Takeover {
        /// The lost engine: its `[[silo.cluster.engine]] address` (or shadow address).
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum IntelAction {
    /// Block KIND VALUE everywhere: the policy's blocklist action, cited in every verdict.
    Block(IntelEntry),
    /// Allow KIND VALUE everywhere: never counted an outbreak, less specific blocks ignored.
    Allow(IntelEntry),
    /// Every entry in force, with its reason and expiry.
    List,
    /// Remove an entry now.
    Expire {
        /// fingerprint, sender, domain or network
        kind: String,
        value: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct IntelEntry {
    /// fingerprint (as verdicts cite it: `f0123…`), sender (an address), domain (covers its
    /// subdomains), network (CIDR)
    pub kind: String,
    pub value: String,
    /// Why (cited in every verdict the entry decides).
    #[arg(long)]
    pub reason: String,
    /// How long it stays in force, e.g. 2h, 7d (at most 365d).
    #[arg(long, default_value = "7d")]
    pub expire: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Edge,
    Dns,
    Engine,
    All,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

fn role_set(roles: &[Role]) -> RoleSet {
    let mut r = RoleSet::default();
    for role in roles {
        match role {
            Role::Edge => r.edge = true,
            Role::Dns => r.dns = true,
            Role::Engine => r.engine = true,
            Role::All => r = RoleSet::ALL,
        }
    }
    r
}

/// The ops listener a command talks to and the operator token. The config names both; with
/// `--ops` and no readable config, the request goes without a token (and the node says 401
/// if it wants one).
fn operator(
    ops: &Option<std::net::SocketAddr>,
    load: &dyn Fn() -> Result<Snapshot, Failure>,
) -> Result<(std::net::SocketAddr, Option<String>), Failure> {
    let (addr, snap) = match ops {
        Some(a) => (*a, load().ok()),
        None => {
            let s = load()?;
            (s.config.ops.listen, Some(s))
        }
    };
    let token = match snap.as_ref().and_then(|s| s.config.ops.token_file.clone()) {
        Some(f) => Some(crate::ops::auth::read_token(&f).map_err(|e| {
            Failure::Unavailable(format!(
                "cannot read the operator token ({}): {e}",
                f.display()
            ))
        })?),
        None => None,
    };
    Ok((addr, token))
}

/// `maildistiller intel …`: one request to the intel API of the node at `addr`.
fn intel_command(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    action: &IntelAction,
) -> Result<(), Failure> {
    let (method, path) = match action {
        IntelAction::List => ("GET", "/intel".to_owned()),
        IntelAction::Block(e) | IntelAction::Allow(e) => {
            let verb = if matches!(action, IntelAction::Block(_)) {
                "block"
            } else {
                "allow"
            };
            (
                "POST",
                format!(
                    "/intel/{verb}?kind={}&value={}&reason={}&expire={}",
                    client::urlencode(&e.kind),
                    client::urlencode(&e.value),
                    client::urlencode(&e.reason),
                    client::urlencode(&e.expire)
                ),
            )
        }
        IntelAction::Expire { kind, value } => (
            "POST",
            format!(
                "/intel/expire?kind={}&value={}",
                client::urlencode(kind),
                client::urlencode(value)
            ),
        ),
    };
    match client::request(addr, method, &path, token) {
        Ok((200, body)) => {
            print!("{body}");
            Ok(())
        }
        Ok((404, body)) if body.is_empty() => Err(Failure::Runtime(format!(
            "{addr} has no intel API (is an engine or edge running there?)"
        ))),
        Ok((_, body)) => {
            eprint!("{body}");
            Err(Failure::Refused)
        }
        Err(e) => Err(Failure::Unavailable(format!(
            "cannot reach the ops listener at {addr}: {e}"
        ))),
    }
}

/// The binary's `main`: parse, dispatch, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report();
            ExitCode::from(f.exit_code())
        }
    }
}

fn dispatch(cli: &Cli) -> Result<(), Failure> {
    let roles = if cli.role.is_empty() {
        RoleSet::ALL
    } else {
        role_set(&cli.role)
    };
    let load = || -> Result<Snapshot, Failure> {
        node::load(&cli.config, roles).map_err(|errors| Failure::Config {
            path: cli.config.clone(),
            errors,
        })
    };
    match &cli.command {
        Some(Command::Check) => {
            print!("{}", explain::summary(&load()?, roles));
            Ok(())
        }
        Some(Command::Route {
            rcpt,
            client,
            edge_silo,
            down,
        }) => match explain::route(&load()?, rcpt, *client, edge_silo.as_deref(), down) {
            Ok(text) => {
                print!("{text}");
                Ok(())
            }
            Err(text) => {
                println!("{text}");
                Err(Failure::Refused)
            }
        },
        Some(Command::Queue { action, ops }) => {
            let (addr, token) = operator(ops, &load)?;
            queue::command(addr, token.as_deref(), action)
        }
        Some(Command::Intel { action, ops }) => {
            let (addr, token) = operator(ops, &load)?;
            intel_command(addr, token.as_deref(), action)
        }
        Some(Command::Egress) => {
            print!("{}", crate::topology::egress::explain(&load()?.topology));
            Ok(())
        }
        Some(Command::Geo { ip }) => {
            print!("{}", explain::geo(&load()?, *ip));
            Ok(())
        }
        Some(Command::DnsExplain {
            name,
            client,
            ecs,
            qtype,
            down,
        }) => {
            let text = crate::dns::explain(load()?, name, qtype, *client, ecs.as_deref(), down)
                .map_err(Failure::Usage)?;
            print!("{text}");
            Ok(())
        }
        Some(Command::User { action }) => user::command(&cli.config, action),
        Some(Command::Learn(args)) => learn::command(std::sync::Arc::new(load()?), args),
        None => {
            if cli.role.is_empty() {
                return Err(Failure::Usage(
                    "say which roles to run (--role edge|dns|engine|all) or a command; see --help"
                        .into(),
                ));
            }
            let snap = load()?;
            run::init_tracing(cli.log_format, &cli.log_level);
            run::run(snap, roles)
        }
    }
}
