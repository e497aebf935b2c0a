//! `kith run`: the foreground daemon. Creates the node dir with defaults on first start, starts
//! the node and the local API, writes `api.json` so the CLI finds it, prints the node's
//! addresses and the control panel URL, and stops cleanly on Ctrl-C, SIGTERM or
//! `POST /api/v1/shutdown` (connections closed, `api.json` removed).

use std::time::Duration;

use crate::{
    api::{self, ApiInfo},
    config::RawConfig,
    node::{Node, NodeError, StartOptions},
    nodedir::{DirError, NodeDir, write_atomic},
};

/// `println!` that ignores a closed stdout: the daemon keeps running when its output goes nowhere.
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Options for [`run`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Node options.
    pub start: StartOptions,
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Starting the node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The node dir could not be created or read.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The API port could not be bound.
    #[error("cannot bind the local API on {addr}: {source} (set [api] listen in kith.toml)")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Some other IO failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the daemon in the foreground until asked to stop.
pub async fn run(dir: NodeDir, opts: RunOptions) -> Result<(), DaemonError> {
    if !dir.is_initialized() {
        let (_, peer) = dir.init(RawConfig::default())?;
        println!("created node dir {} (peer id {peer})", dir.root().display());
    }
    let node = Node::start(dir.clone(), opts.start).await?;
    let handle = node.handle();
    let config = handle.config().clone();
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.api_listen,
            source,
        })?;
    let api_addr = listener.local_addr()?;
    let token = dir.api_token()?;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(4);
    let router = api::router(handle.clone(), token.clone(), stop_tx);
    let socket = crate::local::socket_path(&dir);
    let local_task = match crate::local::listen(&socket, handle.clone(), token.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "no local socket ({}): `kith put` will send files over HTTP", socket.display());
            None
        }
    };
    let (api_stop_tx, api_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api::serve(listener, router, async move {
        let _ = api_stop_rx.await;
    }));
    let info = ApiInfo::new(api_addr, handle.peer_id().to_string());
    let json = serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?;
    write_atomic(dir.root(), "api.json", &json)?;

    // Give the listeners a moment to report their addresses before printing them.
    let mut watch = handle_watch(&handle);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        watch.wait_for(|s| s.listen_addrs.len() >= config.listen.len()),
    )
    .await;
    println!("kith node {} ({})", handle.peer_id(), config.nickname);
    for a in handle.addrs() {
        println!("  listening on {a}");
    }
    println!("control panel: http://{api_addr}/#token={token}");
    println!("press Ctrl-C to stop");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stop_rx.recv() => {}
    }
    println!("stopping");
    let _ = std::fs::remove_file(dir.api_file());
    if let Some(t) = local_task {
        t.abort();
        let _ = std::fs::remove_file(&socket);
    }
    let _ = api_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    node.shutdown().await;
    println!("stopped");
    Ok(())
}

fn handle_watch(
    handle: &crate::node::NodeHandle,
) -> tokio::sync::watch::Receiver<crate::net::NetState> {
    handle.net_watch()
}
