//! Connections to the store, and the one way we talk to it: a batch of commands, each with the
//! hash tag of its keys, sent with a deadline.
//!
//! Standalone: redis-rs's `ConnectionManager` (one multiplexed connection, reconnected in the
//! background), the whole batch as one pipeline. Cluster: redis-rs's async cluster connection;
//! a Cluster pipeline must stay in one slot, so the batch is split by hash tag and the parts
//! are sent at once (still one round trip of wall time), their answers put back in order.
//! Sentinel: the primary Sentinel names, through a `ConnectionManager` like a standalone
//! server; a batch that finds it gone (refused, dropped, late) or demoted (`READONLY`) makes
//! us ask the Sentinels again in the background, and the next batch goes to whichever server
//! they name — the batch that failed is not retried (reads decide locally, writes are counted
//! as failed, as for any outage).
//!
//! No call waits for a reconnect beyond its deadline: connecting happens lazily in the
//! background, and a call that finds the store unreachable fails at once or at its deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Value};

use crate::config::SharedConfig;

/// One command and the hash tag of its keys (every key of one command shares it).
#[derive(Debug, Clone)]
pub struct Call {
    pub tag: String,
    pub cmd: Cmd,
}

/// Why a batch got no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("not connected yet: {0}")]
    Connecting(String),
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Followed>),
}

/// The primary as the Sentinels last named it, and the means to ask them again.
struct Followed {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The primary's address and a connection to it; `None` until the Sentinels named one.
    primary: ArcSwapOption<(String, ConnectionManager)>,
    /// A lookup is under way (one at a time; batches never wait for it).
    asking: AtomicBool,
    config: ConnectionManagerConfig,
}

impl Followed {
    /// Asks the Sentinels which server is the primary (redis-rs checks that it says so
    /// itself) and, when it is another than before, points the connection at it.
    async fn ask(&self, within: Duration) -> Result<(), StoreError> {
        let mut sentinels = self.sentinels.lock().await;
        let client = tokio::time::timeout(within, sentinels.async_get_client())
            .await
            .map_err(|_| StoreError::Connecting("no Sentinel named a primary in time".into()))??;
        let addr = client.get_connection_info().addr().to_string();
        if self.primary.load().as_ref().is_some_and(|p| p.0 == addr) {
            return Ok(());
        }
        let m = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        tracing::info!(primary = %addr, "shared store: Sentinel names the primary");
        self.primary.store(Some(Arc::new((addr, m))));
        Ok(())
    }

    /// Asks again in the background, unless a lookup is already under way.
    fn ask_again(self: &Arc<Self>) {
        if self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.ask(Duration::from_secs(2)).await {
                tracing::debug!(error = %e, "shared store: asking Sentinel for the primary");
            }
            me.asking.store(false, Ordering::Release);
        });
    }
}

/// Whether an answer says the server we wrote to is no longer the primary, or gone.
fn lost_primary(r: &Result<Vec<Value>, StoreError>) -> bool {
    match r {
        Err(StoreError::Redis(e)) => {
            e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.code() == Some("READONLY")
        }
        Err(_) => true,
        Ok(values) => values
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "READONLY")),
    }
}

/// A connection to one deployment (where writes go, or where the message path reads).
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Single(_) => "Conn(standalone)",
            Inner::Cluster(_) => "Conn(cluster)",
            Inner::Sentinel(_) => "Conn(sentinel)",
        })
    }
}

/// The addresses check out (what `maildistiller check` can say without connecting).
pub fn parse(urls: &[String]) -> Result<(), String> {
    for u in urls {
        redis::Client::open(u.as_str()).map_err(|e| format!("{u:?}: {e}"))?;
    }
    Ok(())
}

impl Conn {
    /// A connection that connects in the background; `urls` are one server, or Cluster seed
    /// nodes. `replicas`: a Cluster connection that reads from replicas.
    pub async fn open(
        cfg: &SharedConfig,
        urls: &[String],
        replicas: bool,
    ) -> Result<Conn, StoreError> {
        let connect = Duration::from_secs(2);
        if cfg.cluster {
            let mut b = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(connect)
                .response_timeout(super::WRITE_DEADLINE)
                .retries(1);
            if replicas {
                b = b.read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
            }
            let client = b.build()?;
            let c = tokio::time::timeout(connect, client.get_async_connection())
                .await
                .map_err(|_| StoreError::Connecting("cluster: no seed node answered".into()))??;
            return Ok(Conn {
                inner: Inner::Cluster(c),
            });
        }
        let url = urls
            .first()
            .ok_or_else(|| StoreError::Connecting("no address configured".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(super::WRITE_DEADLINE))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        if !cfg.sentinel.is_empty() && !replicas && urls == cfg.redis.as_slice() {
            return Conn::follow(cfg, urls, config, connect).await;
        }
        let client = redis::Client::open(url.as_str())?;
        let m = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Conn {
            inner: Inner::Single(m),
        })
    }

    /// The primary that the Sentinels at `urls` name `cfg.sentinel`, asked once now (within
    /// `connect`) and again after every batch that finds it gone or demoted.
    async fn follow(
        cfg: &SharedConfig,
        urls: &[String],
        config: ConnectionManagerConfig,
        connect: Duration,
    ) -> Result<Conn, StoreError> {
        let mut sentinels = Vec::with_capacity(urls.len());
        let mut primary = None;
        for u in urls {
            let info = u.as_str().into_connection_info()?;
            primary.get_or_insert_with(|| info.redis_settings().clone());
            sentinels.push(info.addr().clone());
        }
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(primary.unwrap_or_default());
        let client = SentinelClient::build(
            sentinels,
            cfg.sentinel.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let f = Followed {
            sentinels: tokio::sync::Mutex::new(client),
            primary: ArcSwapOption::empty(),
            asking: AtomicBool::new(false),
            config,
        };
        f.ask(connect).await?;
        Ok(Conn {
            inner: Inner::Sentinel(Arc::new(f)),
        })
    }

    /// Sends `calls` and returns one answer per call, in order, within `deadline`. An error
    /// reply to one command is that command's `Value::ServerError`, not a failure of the batch.
    pub async fn batch(
        &self,
        calls: &[Call],
        deadline: Duration,
    ) -> Result<Vec<Value>, StoreError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let run = async {
            match &self.inner {
                Inner::Single(m) => single_batch(m, calls).await,
                Inner::Cluster(c) => cluster_batch(c, calls).await,
                Inner::Sentinel(f) => {
                    let Some(primary) = f.primary.load_full() else {
                        return Err(StoreError::Connecting("no primary named yet".into()));
                    };
                    single_batch(&primary.1, calls).await
                }
            }
        };
        let r = tokio::time::timeout(deadline, run)
            .await
            .unwrap_or(Err(StoreError::Timeout(deadline)));
        if let Inner::Sentinel(f) = &self.inner
            && lost_primary(&r)
        {
            f.ask_again();
        }
        r
    }
}

/// The whole batch as one pipeline.
async fn single_batch(m: &ConnectionManager, calls: &[Call]) -> Result<Vec<Value>, StoreError> {
    let mut p = redis::pipe();
    for c in calls {
        p.add_command(c.cmd.clone());
    }
    let mut m = m.clone();
    p.ignore_errors();
    p.query_async::<Vec<Value>>(&mut m)
        .await
        .map_err(StoreError::from)
}

/// One pipeline per hash tag, sent concurrently; answers back in the callers' order.
async fn cluster_batch(c: &ClusterConnection, calls: &[Call]) -> Result<Vec<Value>, StoreError> {
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, call) in calls.iter().enumerate() {
        groups.entry(call.tag.as_str()).or_default().push(i);
    }
    let mut parts = Vec::with_capacity(groups.len());
    for idx in groups.into_values() {
        let mut p = redis::pipe();
        p.ignore_errors();
        for &i in &idx {
            p.add_command(calls[i].cmd.clone());
        }
        let mut conn = c.clone();
        parts.push(async move {
            let r = p.query_async::<Vec<Value>>(&mut conn).await;
            (idx, r)
        });
    }
    let mut out = vec![Value::Nil; calls.len()];
    let futs: Vec<_> = parts.into_iter().map(Box::pin).collect();
    for (idx, r) in join_all(futs).await {
        for (i, v) in idx.into_iter().zip(r?) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// Polls every future to completion concurrently (no spawning; small batches).
async fn join_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, f) in out.iter_mut().zip(futs.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
