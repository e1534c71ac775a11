//! Layer-4 mode (`edge.tcp_listen`): for backends that are not ours. Each connection goes to the
//! nearest healthy cluster to the client (any region), the engine is chosen by P2C, the backend
//! gets a PROXY header (per engine: v2, v1 or none), and bytes are relayed both ways
//! ([`super::relay`]: no buffer held per idle connection) until both sides have closed or
//! nothing has moved either way for `edge.data_timeout`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::EdgeShared;
use super::admission::Permit;
use crate::smtp::replies;

pub async fn serve(
    shared: Arc<EdgeShared>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    _permit: Permit,
) {
    let snap = shared.ops.config.load_full();
    let (info, located) = super::introduce_client(&snap, peer, local);
    let route = {
        let map = shared.backends.map();
        let view = shared.backends.view(&map, &snap.topology);
        snap.topology
            .route(&shared.any_tenant, snap.local_silo, located.point, &view)
    };
    let mut rng = fastrand::Rng::new();
    let conn = shared
        .backends
        .connect(&snap, &route, &info, &shared.metrics, &mut rng, false)
        .await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            use tokio::io::AsyncWriteExt;
            shared.metrics.routed("", "", "no_engine");
            tracing::warn!(client = %peer, tried = e.tried, "tcp mode: no backend reachable");
            let mut out = Vec::new();
            replies::NO_BACKEND.write_to(&mut out);
            let _ = client.write_all(&out).await;
            return;
        }
    };
    shared.metrics.routed(
        "",
        &snap
            .topology
            .cluster_label(snap.topology.engines[conn.engine.0].cluster),
        "routed",
    );
    drop(snap);
    shared.metrics.sessions.inc();
    let idle = shared.ops.config.load().config.edge.data_timeout.get();
    let _ = super::relay::relay(&mut client, &mut conn.stream, idle).await;
    shared.metrics.sessions.dec();
}
