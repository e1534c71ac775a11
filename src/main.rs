//! The `maildistiller` binary: parse the command line, load and validate the config without
//! binding anything, then bind every listener, then run the roles until SIGTERM.
//!
//! Exit codes (sysexits.h): 0 clean exit; 1 no route (`route`) or a runtime failure; 64 bad
//! command line or config; 69 a requested role is not available in this build; 71 a listener
//! could not be bound; 75 the shutdown grace period expired with sessions still open.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use maildistiller::config::{RoleSet, Snapshot};
use maildistiller::explain;
use maildistiller::ops::{self, Ops};

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_OSERR: u8 = 71;
const EX_TEMPFAIL: u8 = 75;

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
struct Cli {
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
    /// Manage webmail users (edits the tenant's config file; reload to apply).
    User {
        #[command(subcommand)]
        action: maildistiller::engine::webmail::users::UserCommand,
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

#[derive(Subcommand, Debug)]
enum QueueAction {
    /// One line per message: id, state, tenant, age, size, envelope, reason.
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// queued, deferred, held, delivering, hold, quarantined
        #[arg(long)]
        state: Option<String>,
    },
    /// Envelope, per-recipient state, verdict and retry state of one message.
    Show { id: String },
    /// Retry now: one message, or every deferred message (and re-probe down destinations).
    Flush { id: Option<String> },
    /// Put a queued message on hold (not delivered until released).
    Hold { id: String },
    /// Release a held or quarantined message for delivery.
    Release { id: String },
    /// Delete a message from the queue (no DSN).
    Delete { id: String },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Edge,
    Dns,
    Engine,
    All,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
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

/// Roles this build can run. The others are announced, not faked.
fn built(role: &str) -> bool {
    matches!(role, "engine" | "edge" | "dns")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let roles = if cli.role.is_empty() {
        RoleSet::ALL
    } else {
        role_set(&cli.role)
    };
    let load = || {
        Snapshot::load(&cli.config, roles, None).map_err(|errors| {
            eprintln!(
                "maildistiller: {} has {} error{}:",
                cli.config.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(EX_USAGE)
        })
    };
    match &cli.command {
        Some(Command::Check) => match load() {
            Ok(snap) => {
                print!("{}", explain::summary(&snap, roles));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Route {
            rcpt,
            client,
            edge_silo,
            down,
        }) => match load() {
            Ok(snap) => match explain::route(&snap, rcpt, *client, edge_silo.as_deref(), down) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(text) => {
                    println!("{text}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Some(Command::Queue { action, ops }) => {
            let addr = match ops {
                Some(a) => *a,
                None => match load() {
                    Ok(snap) => snap.config.ops.listen,
                    Err(code) => return code,
                },
            };
            queue_command(addr, action)
        }
        Some(Command::Egress) => match load() {
            Ok(snap) => {
                print!(
                    "{}",
                    maildistiller::topology::egress::explain(&snap.topology)
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::Geo { ip }) => match load() {
            Ok(snap) => {
                print!("{}", explain::geo(&snap, *ip));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Some(Command::DnsExplain {
            name,
            client,
            ecs,
            qtype,
            down,
        }) => match load() {
            Ok(snap) => {
                let ecs = ecs.as_deref();
                match maildistiller::dns::explain(snap, name, qtype, *client, ecs, down) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(text) => {
                        eprintln!("maildistiller: {text}");
                        ExitCode::from(EX_USAGE)
                    }
                }
            }
            Err(code) => code,
        },
        Some(Command::User { action }) => {
            maildistiller::engine::webmail::users::command(&cli.config, action)
        }
        None => {
            if cli.role.is_empty() {
                eprintln!(
                    "maildistiller: say which roles to run (--role edge|dns|engine|all) or a command; see --help"
                );
                return ExitCode::from(EX_USAGE);
            }
            let snap = match load() {
                Ok(s) => s,
                Err(code) => return code,
            };
            init_tracing(cli.log_format, &cli.log_level);
            run(
                snap,
                cli.config.clone(),
                roles,
                cli.role.contains(&Role::All),
            )
        }
    }
}

fn queue_command(addr: std::net::SocketAddr, action: &QueueAction) -> ExitCode {
    let enc = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            .then(|| s.to_owned())
    };
    let (method, path) = match action {
        QueueAction::List { tenant, state } => {
            let mut q = Vec::new();
            if let Some(t) = tenant.as_deref().and_then(enc) {
                q.push(format!("tenant={t}"));
            }
            if let Some(s) = state.as_deref().and_then(enc) {
                q.push(format!("state={s}"));
            }
            ("GET", format!("/queue?{}", q.join("&")))
        }
        QueueAction::Show { id } => ("GET", format!("/queue/{}", enc(id).unwrap_or_default())),
        QueueAction::Flush { id: None } => ("POST", "/queue/flush".to_owned()),
        QueueAction::Flush { id: Some(id) } => (
            "POST",
            format!("/queue/{}/flush", enc(id).unwrap_or_default()),
        ),
        QueueAction::Hold { id } => (
            "POST",
            format!("/queue/{}/hold", enc(id).unwrap_or_default()),
        ),
        QueueAction::Release { id } => (
            "POST",
            format!("/queue/{}/release", enc(id).unwrap_or_default()),
        ),
        QueueAction::Delete { id } => (
            "POST",
            format!("/queue/{}/delete", enc(id).unwrap_or_default()),
        ),
    };
    match maildistiller::ops::client::request(addr, method, &path) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((404, body)) if body.is_empty() => {
            eprintln!("maildistiller: {addr} has no queue API (is an engine running there?)");
            ExitCode::FAILURE
        }
        Ok((_, body)) => {
            eprint!("{body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("maildistiller: cannot reach the ops listener at {addr}: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(snap: Snapshot, path: PathBuf, roles: RoleSet, all: bool) -> ExitCode {
    let wanted = [
        ("edge", roles.edge, "#4"),
        ("dns", roles.dns, "#5"),
        ("engine", roles.engine, "#3"),
    ];
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(name, on, _)| *on && !built(name))
        .collect();
    if !all && let Some((name, _, issue)) = missing.first() {
        eprintln!(
            "maildistiller: the {name} role is not built yet (issue {issue}); nothing started"
        );
        return ExitCode::from(EX_UNAVAILABLE);
    }
    for (name, _, issue) in &missing {
        tracing::warn!(
            role = name,
            "the {name} role is not built yet (issue {issue}); --role all runs without it"
        );
    }
    for w in &snap.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("maildistiller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let ops_listen = snap.config.ops.listen;
        let grace = snap.config.ops.grace_period.get();
        let ops = Ops::new(snap, path, roles);
        let listener = match tokio::net::TcpListener::bind(ops_listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %ops_listen, error = %e, "cannot bind the ops listener");
                return ExitCode::from(EX_OSERR);
            }
        };
        if let Ok(a) = listener.local_addr() {
            let _ = ops.ops_addr.set(a);
        }
        tracing::info!(
            ops = %ops_listen,
            silo = ops.config.load().local_silo_name(),
            version = %ops.config.load().version,
            roles = %ops::role_label(roles),
            "maildistiller started"
        );
        let mut tasks = tokio::task::JoinSet::new();
        // Bind every role's listeners before declaring readiness; a role's `bind` returns the
        // future that serves until `ops.shutdown` and then drains.
        // (role binds go here, one block per role, in the order engine, dns, edge)
        if roles.engine {
            match maildistiller::engine::bind(&ops).await {
                Ok(bound) => {
                    tracing::info!(smtp = ?bound.addrs, "engine listening");
                    tasks.spawn(bound.serving);
                }
                Err(e) => return bind_failed("engine", e),
            }
        }
        if roles.edge {
            match maildistiller::edge::bind(&ops).await {
                Ok(bound) => {
                    tracing::info!(smtp = ?bound.smtp, tcp = ?bound.tcp, "edge listening");
                    tasks.spawn(bound.serving);
                }
                Err(e) => return bind_failed("edge", e),
            }
        }
        // After the edge: with both roles in one process, GeoDNS's first probe of its own silo's
        // edge finds it listening (no spurious "silo down, fail open" at start).
        if roles.dns {
            match maildistiller::dns::bind(&ops).await {
                Ok(bound) => {
                    tasks.spawn(bound.serve());
                }
                Err(e) => return bind_failed("dns", e),
            }
        }
        tasks.spawn(ops::serve(ops.clone(), listener));
        tasks.spawn(watch(ops.clone()));
        ops.set_ready(true);
        if let Err(e) = ops::handle_signals(ops.clone()).await {
            tracing::error!(error = %e, "cannot install signal handlers");
            ops.shutdown.cancel();
        }
        match tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await {
            Ok(()) => {
                tracing::info!("drained; bye");
                ExitCode::SUCCESS
            }
            Err(_) => {
                tracing::error!(grace = ?grace, "grace period expired: cutting the remaining sessions");
                ExitCode::from(EX_TEMPFAIL)
            }
        }
    })
}

/// Logs a listener that could not be bound and gives the exit code for it.
fn bind_failed(role: &str, e: std::io::Error) -> ExitCode {
    tracing::error!(role, error = %e, "cannot bind a listener; nothing started");
    ExitCode::from(EX_OSERR)
}

async fn watch(ops: Arc<Ops>) -> std::io::Result<()> {
    ops::watch_geo(ops).await;
    Ok(())
}
