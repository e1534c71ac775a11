//! Connections to the store, and the one way we talk to it: a batch of commands, each with the
//! hash tag of its keys, sent with a deadline.
//!
//! Standalone: redis-rs's `ConnectionManager` (one multiplexed connection, reconnected in the
//! background), the whole batch as one pipeline. Cluster: redis-rs's async cluster connection;
//! a Cluster pipeline must stay in one slot, so the batch is split by hash tag and the parts
//! are sent at once (still one round trip of wall time), their answers put back in order.
//!
//! No call waits for a reconnect beyond its deadline: connecting happens lazily in the
//! background, and a call that finds the store unreachable fails at once or at its deadline.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Value};

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
        let client = redis::Client::open(url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(super::WRITE_DEADLINE))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let m = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Conn {
            inner: Inner::Single(m),
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
                Inner::Single(m) => {
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
                Inner::Cluster(c) => cluster_batch(c, calls).await,
            }
        };
        tokio::time::timeout(deadline, run)
            .await
            .map_err(|_| StoreError::Timeout(deadline))?
    }
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
