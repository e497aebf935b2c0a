//! The local HTTP API (axum), which the CLI talks to and the control panel will be built on.
//!
//! It binds loopback only (the config refuses anything else) and every `/api/v1/` request must
//! carry `Authorization: Bearer <token>` (the token is `private/api-token`, 0600). The `Host`
//! header must name a loopback host, which defeats DNS-rebinding pages; since a browser cannot
//! send a custom `Authorization` header cross-origin without a CORS preflight that this server
//! never grants, the token header is also the CSRF defence.
//!
//! Routes (JSON unless noted):
//! - `GET /api/v1/status` — node id, nickname, addresses, connected peers, storage usage
//! - `GET /api/v1/id` — dialable multiaddrs with `/p2p/<id>`
//! - `GET /api/v1/peers`, `POST /api/v1/peers {"addr": …}`, `DELETE /api/v1/peers/{peer}`
//! - `POST /api/v1/files?random_key=&needed=&happy=&total=` — body is the file; returns the cap.
//!   With a convergent key the body is received (spooled to `tmp/` past 1 MiB) before it is
//!   encoded; with a random key and a `Content-Length` it is encoded and sent as it arrives
//! - `GET /api/v1/files/{cap}` — body is the file (streamed); header `x-kith-report` names the
//!   report at `GET /api/v1/reports/{id}` (servers used, bad shares, shares read around
//!   because their server was slow, servers whose listing never came, error if it broke off)
//! - `POST /api/v1/shutdown` — stops the daemon cleanly
//! - directories, paths, aliases, mutable files and deep-check: see `api_fs`
//! - `POST /api/v1/check {"cap": …, "verify": bool, "repair": bool}` — checks (verifies,
//!   repairs) a file by its read or verify cap; returns the [`crate::checker::CheckReport`]
//! - `GET /api/v1/repairer`, `POST /api/v1/repairer/run` — the automatic repairer's progress;
//!   start a pass now

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{
    client::{DownloadReport, PutOptions, parse_read_cap},
    codec::{ConvergentKeyHasher, KEY_PIECE},
    config::StaticPeer,
    node::NodeHandle,
};

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) node: NodeHandle,
    token: Arc<String>,
    shutdown: tokio::sync::mpsc::Sender<()>,
}

/// An error body: `{"error": "…"}` with a status code.
#[derive(Debug, Serialize)]
pub(crate) struct ApiError {
    error: String,
    #[serde(skip)]
    status: StatusCode,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            status,
        }
    }

    /// A 500 with what the OS said.
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }

    /// The message.
    pub(crate) fn error(&self) -> &str {
        &self.error
    }

    /// The status code.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl ApiState {
    /// The API token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

/// Builds the router. `stop` receives a message when a client asks the daemon to stop.
pub fn router(node: NodeHandle, token: String, stop: tokio::sync::mpsc::Sender<()>) -> Router {
    let state = state(node, token, stop);
    let api = Router::new()
        .route("/status", get(status))
        .route("/id", get(id))
        .route("/peers", get(peers).post(add_peer))
        .route("/peers/{peer}", axum::routing::delete(remove_peer))
        .route("/grid", get(grid_info))
        .route("/grid/invite", post(invite))
        .route("/grid/join", post(join))
        .route("/grid/expel", post(expel))
        .route("/friends", get(friends))
        .route("/friends/{peer}/grant", post(grant))
        .route("/friends/{peer}/revoke", post(revoke))
        .route("/policy", get(policy).post(set_policy))
        .route("/operations", get(operations))
        .route("/collector", get(collector))
        .route("/collector/run", post(collect))
        .route("/renew", post(renew))
        .route("/audit/run", post(audit))
        .route("/files", post(put))
        .route("/files/{cap}", get(get_file))
        .route("/reports/{id}", get(report))
        .route("/shutdown", post(shutdown))
        .merge(crate::api_fs::routes())
        // Check, verify and repair; the automatic repairer.
        .route("/check", post(check))
        .route("/repairer", get(repairer))
        .route("/repairer/run", post(repairer_run))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(index))
        .merge(metrics)
        .nest("/api/v1", api)
        .layer(middleware::from_fn(loopback_host))
        .with_state(state)
}

/// The state the API's handlers share.
pub(crate) fn state(
    node: NodeHandle,
    token: String,
    stop: tokio::sync::mpsc::Sender<()>,
) -> ApiState {
    ApiState {
        node,
        token: Arc::new(token),
        shutdown: stop,
    }
}

/// Serves the router on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

async fn loopback_host(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "the kith API only answers loopback hosts",
        )
        .into_response();
    }
    next.run(req).await
}

/// CSRF defence in depth (the token is already required, and browsers never attach it by
/// themselves): a state change that carries an `Origin` must come from this server's own
/// origin. Requests without `Origin` (the CLI, curl) pass.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    match origin.to_str() {
        Ok(o) => o
            .strip_prefix("http://")
            .is_some_and(|authority| !host.is_empty() && authority.eq_ignore_ascii_case(host)),
        Err(_) => false,
    }
}

async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(st.token.as_bytes())) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (see private/api-token in the node dir)",
        )
        .into_response();
    }
    if !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) && !same_origin(&req)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: state changes come only from the panel's own origin",
        )
        .into_response();
    }
    next.run(req).await
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page talks only to its own origin, loads nothing from elsewhere, and may not
            // be framed (clickjacking) or leak its URL (the token is in the fragment anyway).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; \
                 base-uri 'none'; form-action 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("panel.html"),
    )
}

async fn status(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.node.status().await)
}

async fn id(State(st): State<ApiState>) -> impl IntoResponse {
    let addrs: Vec<String> = st.node.addrs().iter().map(ToString::to_string).collect();
    Json(serde_json::json!({ "peer_id": st.node.peer_id().to_string(), "addrs": addrs }))
}

async fn peers(State(st): State<ApiState>) -> impl IntoResponse {
    let connected = st.node.connected();
    let list: Vec<_> = st
        .node
        .static_peers()
        .iter()
        .map(|p| {
            serde_json::json!({
                "peer_id": p.peer.to_string(),
                "addr": p.to_string(),
                "connected": connected.contains_key(&p.peer),
            })
        })
        .collect();
    Json(list)
}

#[derive(Deserialize)]
struct AddPeer {
    addr: String,
}

async fn add_peer(
    State(st): State<ApiState>,
    Json(body): Json<AddPeer>,
) -> Result<impl IntoResponse, ApiError> {
    let peer: StaticPeer = body
        .addr
        .parse()
        .map_err(|e: String| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    st.node
        .add_peer(peer.clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(
        serde_json::json!({ "peer_id": peer.peer.to_string(), "connected": true }),
    ))
}

async fn remove_peer(
    State(st): State<ApiState>,
    Path(peer): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = peer.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{peer:?} is not a peer id"),
        )
    })?;
    let removed = st
        .node
        .remove_peer(peer)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

async fn grid_info(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.node.grid_info().await)
}

#[derive(Deserialize)]
struct InviteBody {
    /// Lifetime in seconds [default: 7 days].
    expires_secs: Option<u64>,
    /// Joins allowed [default: 1].
    uses: Option<u32>,
}

async fn invite(
    State(st): State<ApiState>,
    Json(body): Json<InviteBody>,
) -> Result<impl IntoResponse, ApiError> {
    let ttl = body
        .expires_secs
        .map_or(crate::grid::INVITE_TTL, std::time::Duration::from_secs);
    let info = st
        .node
        .invite(ttl, body.uses.unwrap_or(1))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(info))
}

#[derive(Deserialize)]
struct JoinBody {
    code: String,
}

fn grid_status(e: &crate::grid::GridError) -> StatusCode {
    use crate::grid::GridError as G;
    match e {
        G::Code(_) => StatusCode::BAD_REQUEST,
        G::Refused(_) | G::NotAllowed(_) => StatusCode::FORBIDDEN,
        G::AlreadyMember(_) => StatusCode::CONFLICT,
        G::NotMember(_) => StatusCode::NOT_FOUND,
        G::Join(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn join(
    State(st): State<ApiState>,
    Json(body): Json<JoinBody>,
) -> Result<impl IntoResponse, ApiError> {
    let members = st
        .node
        .join(&body.code)
        .await
        .map_err(|e| ApiError::new(grid_status(&e), e.to_string()))?;
    Ok(Json(serde_json::json!({ "members": members })))
}

#[derive(Deserialize)]
struct ExpelBody {
    peer: String,
}

async fn expel(
    State(st): State<ApiState>,
    Json(body): Json<ExpelBody>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = body.peer.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a peer id", body.peer),
        )
    })?;
    st.node
        .expel(peer)
        .await
        .map_err(|e| ApiError::new(grid_status(&e), e.to_string()))?;
    Ok(Json(serde_json::json!({ "expelled": body.peer })))
}

fn friend_status(e: &crate::friends::FriendError) -> StatusCode {
    match e {
        crate::friends::FriendError::BadPeer(_) | crate::friends::FriendError::Invalid(_) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn friend_err(e: crate::friends::FriendError) -> ApiError {
    ApiError::new(friend_status(&e), e.to_string())
}

async fn friends(State(st): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.friends_info().await.map_err(friend_err)?))
}

fn parse_peer(peer: &str) -> Result<libp2p::PeerId, ApiError> {
    peer.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{peer:?} is not a peer id"),
        )
    })
}

async fn friend_of(
    st: &ApiState,
    peer: &libp2p::PeerId,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = st.node.friends_info().await.map_err(friend_err)?;
    let id = peer.to_string();
    let f = info
        .friends
        .into_iter()
        .find(|f| f.peer_id == id)
        .map(|f| serde_json::to_value(f).unwrap_or_default())
        .unwrap_or_else(|| serde_json::json!({ "peer_id": id }));
    Ok(Json(f))
}

#[derive(Deserialize)]
struct GrantBody {
    /// "unlimited" or a size ("50GiB") [default: unlimited].
    quota: Option<String>,
}

async fn grant(
    State(st): State<ApiState>,
    Path(peer): Path<String>,
    Json(body): Json<GrantBody>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = parse_peer(&peer)?;
    let quota: kith_accounting::Quota = body
        .quota
        .as_deref()
        .unwrap_or("unlimited")
        .parse()
        .map_err(|e: kith_accounting::PolicyError| {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        })?;
    st.node.grant(peer, quota).await.map_err(friend_err)?;
    friend_of(&st, &peer).await
}

#[derive(Deserialize)]
struct RevokeBody {
    /// Grace period before its shares may be collected [default: 7 days].
    grace_secs: Option<u64>,
}

async fn revoke(
    State(st): State<ApiState>,
    Path(peer): Path<String>,
    Json(body): Json<RevokeBody>,
) -> Result<impl IntoResponse, ApiError> {
    let peer = parse_peer(&peer)?;
    let grace = std::time::Duration::from_secs(body.grace_secs.unwrap_or(7 * 86400));
    st.node.revoke(peer, grace).await.map_err(friend_err)?;
    friend_of(&st, &peer).await
}

async fn policy(State(st): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(st.node.friends().policy_info().map_err(friend_err)?))
}

#[derive(Deserialize)]
struct PolicyBody {
    /// `default-grant 10GiB`, `reciprocal 1.0`, `invite-only on`...
    change: String,
}

async fn set_policy(
    State(st): State<ApiState>,
    Json(body): Json<PolicyBody>,
) -> Result<impl IntoResponse, ApiError> {
    let change: kith_accounting::PolicyChange =
        body.change
            .parse()
            .map_err(|e: kith_accounting::PolicyError| {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            })?;
    Ok(Json(st.node.set_policy(change).await.map_err(friend_err)?))
}

async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.node.metrics().await,
    )
}

async fn collector(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.node.collector_status())
}

async fn collect(State(st): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    st.node
        .collect()
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))
}

#[derive(Deserialize)]
struct AuditBody {
    /// Challenges to send [default: 10].
    count: Option<usize>,
}

async fn audit(
    State(st): State<ApiState>,
    Json(body): Json<AuditBody>,
) -> Result<impl IntoResponse, ApiError> {
    st.node
        .audit(body.count.unwrap_or(10).min(10_000))
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn renew(State(st): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    st.node
        .renew()
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn operations(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.node.operations())
}

#[derive(Deserialize)]
pub(crate) struct PutQuery {
    /// File name (for the operations list).
    pub(crate) name: Option<String>,
    random_key: Option<bool>,
    needed: Option<u8>,
    happy: Option<u8>,
    total: Option<u8>,
    /// Where to link the file (`alias:path`); a writable mutable file there is updated in
    /// place instead (a new version under the same cap).
    path: Option<String>,
}

async fn put(
    State(st): State<ApiState>,
    Query(q): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let total = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let op = st
        .node
        .op_start("upload", q.name.as_deref().unwrap_or("upload"), total);
    let mut guard = OpGuard::new(&st.node, op);
    let res = put_inner(&st, q, body, op, total).await;
    guard.error = res.as_ref().err().map(|e| e.error.clone());
    res
}

/// Finishes an upload's operation when dropped, also when the client goes away and the
/// future is dropped mid-way: with `error` (set it to `None` on success).
pub(crate) struct OpGuard {
    node: NodeHandle,
    op: u64,
    pub(crate) error: Option<String>,
}

impl OpGuard {
    pub(crate) fn new(node: &NodeHandle, op: u64) -> OpGuard {
        OpGuard {
            node: node.clone(),
            op,
            error: Some("the upload was interrupted".into()),
        }
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.node.op_finish(self.op, self.error.take());
    }
}

/// Bodies up to this size (by their Content-Length) are uploaded from memory, not spooled.
const SMALL_BODY: u64 = 1 << 20;
/// Pieces of a spooled body being written and hashed at once.
const SPOOL_PIECES: usize = 4;

/// A spooled piece being written and hashed: its key digest and length.
type PieceTask = tokio::task::JoinHandle<std::io::Result<([u8; 32], usize)>>;

async fn put_inner(
    st: &ApiState,
    q: PutQuery,
    body: Body,
    op: u64,
    total: Option<u64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (params, convergent) = put_params(st, &q)?;
    if let Some(len) = total.filter(|&t| !convergent && t > SMALL_BODY) {
        return put_streamed(st, &q, body, op, params, len).await;
    }
    let mut hasher =
        convergent.then(|| ConvergentKeyHasher::new(st.node.convergence_secret(), &params));
    // Small bodies stay in memory; larger ones are spooled to `tmp/`. Either way the body is
    // hashed for the convergent key as it arrives, so encoding is one more pass, not two.
    let small = total.is_some_and(|t| t <= SMALL_BODY);
    let spool = if small {
        None
    } else {
        Some(
            tempfile::NamedTempFile::new_in(st.node.dir().tmp())
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        )
    };
    let spool_path = spool.as_ref().map(|s| s.path().to_owned());
    let mut mem: Vec<u8> = Vec::new();
    let spool_start = std::time::Instant::now();
    let mut received = 0u64;
    {
        // A spooled body is cut into the key's pieces as it arrives; each piece is written at
        // its offset and hashed on the blocking pool, several at once, so receiving, writing
        // and hashing overlap and use every core. The digests are added in order.
        let file = match &spool {
            Some(s) => Some(Arc::new(
                s.as_file().try_clone().map_err(ApiError::internal)?,
            )),
            None => None,
        };
        let mut pieces: futures::stream::FuturesOrdered<PieceTask> =
            futures::stream::FuturesOrdered::new();
        let mut piece: Vec<bytes::Bytes> = Vec::new();
        let mut piece_len = 0usize;
        let hash = hasher.is_some();
        let spawn_piece = |file: &Arc<std::fs::File>, parts: Vec<bytes::Bytes>, at: u64| {
            let file = file.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<([u8; 32], usize)> {
                use std::os::unix::fs::FileExt;
                let mut pos = at;
                for p in &parts {
                    file.write_all_at(p, pos)?;
                    pos += p.len() as u64;
                }
                let digest = if hash {
                    ConvergentKeyHasher::piece_digest_of(parts.iter().map(|p| &p[..]))
                } else {
                    [0; 32]
                };
                Ok((digest, (pos - at) as usize))
            })
        };
        let add = |h: &mut Option<ConvergentKeyHasher>,
                   done: Result<std::io::Result<([u8; 32], usize)>, tokio::task::JoinError>|
         -> Result<(), ApiError> {
            let (digest, len) = done
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            if let Some(h) = h.as_mut() {
                h.add_piece(&digest, len);
            }
            Ok(())
        };
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let mut chunk =
                chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            received += chunk.len() as u64;
            // Receiving is the first half of an upload, encoding and sending the second.
            st.node.op_progress(op, received / 2);
            let Some(file) = &file else {
                if received > SMALL_BODY {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "the body is longer than its Content-Length",
                    ));
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                mem.extend_from_slice(&chunk);
                continue;
            };
            while !chunk.is_empty() {
                let take = chunk.len().min(KEY_PIECE - piece_len);
                piece.push(chunk.split_to(take));
                piece_len += take;
                if piece_len == KEY_PIECE {
                    let at = received - chunk.len() as u64 - KEY_PIECE as u64;
                    pieces.push_back(spawn_piece(file, std::mem::take(&mut piece), at));
                    piece_len = 0;
                }
            }
            while pieces.len() >= SPOOL_PIECES {
                if let Some(done) = pieces.next().await {
                    add(&mut hasher, done)?;
                }
            }
        }
        if let Some(file) = &file
            && piece_len > 0
        {
            pieces.push_back(spawn_piece(file, piece, received - piece_len as u64));
        }
        while let Some(done) = pieces.next().await {
            add(&mut hasher, done)?;
        }
    }
    // Every byte received is in `mem` or written to the spool.
    let body_len = received;
    let spool_ms = spool_start.elapsed().as_millis() as u64;
    let opts = PutOptions {
        params,
        convergent,
        key: hasher.map(ConvergentKeyHasher::finalize),
    };
    let source = match &spool_path {
        Some(p) => crate::client::Source::File(p),
        None => crate::client::Source::Bytes(&mem),
    };
    let mut json = store_put(st, &q, source, body_len, &opts, op).await?;
    drop(spool);
    json["timings"]["receive_ms"] = spool_ms.into();
    Ok(Json(json))
}

/// Body chunks in flight between the HTTP connection and a streamed upload's encoder.
const STREAM_CHUNKS: usize = 4;

/// A random-key upload of a body of known length: encoded and sent as it arrives, never
/// spooled (no receive phase, no copy of the file in `tmp/`, no free space needed for it).
/// A body that ends early or breaks fails the upload and drops the shares begun.
async fn put_streamed(
    st: &ApiState,
    q: &PutQuery,
    body: Body,
    op: u64,
    params: crate::codec::EncodingParams,
    len: u64,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
    let incoming = crate::client::Incoming::new(len, rx);
    let opts = PutOptions {
        params,
        convergent: false,
        key: None,
    };
    // The body is read here while the upload reads the channel; whichever fails first ends
    // both (a closed channel stops the reader, a dropped sender ends the upload's input).
    let feed = async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
        Ok::<(), ApiError>(())
    };
    let upload = async {
        let put = store_put(
            st,
            q,
            crate::client::Source::Stream(&incoming),
            len,
            &opts,
            op,
        )
        .await;
        // Done, or failed early (no servers, say): the body is not wanted any more.
        incoming.close().await;
        put
    };
    let (fed, put) = tokio::join!(feed, upload);
    // A broken body is the reason the upload failed, if it did.
    let mut json = put.map_err(|e| fed.err().unwrap_or(e))?;
    json["timings"]["receive_ms"] = 0.into();
    Ok(Json(json))
}

/// The encoding parameters of a put (the node's, overridden by the query) and whether its key
/// is convergent.
pub(crate) fn put_params(
    st: &ApiState,
    q: &PutQuery,
) -> Result<(crate::codec::EncodingParams, bool), ApiError> {
    let cfg = st.node.config();
    let mut params = cfg.encoding;
    params.needed = q.needed.unwrap_or(params.needed);
    params.happy = q.happy.unwrap_or(params.happy);
    params.total = q.total.unwrap_or(params.total);
    params
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok((params, !q.random_key.unwrap_or(!cfg.convergent)))
}

/// Stores a received (or handed-over) file: a new version of the mutable file at the query's
/// path if there is one, else an immutable upload, linked at the path when one is given.
/// Progress runs from half (receiving was the first half) to the whole.
pub(crate) async fn store_put(
    st: &ApiState,
    q: &PutQuery,
    source: crate::client::Source<'_>,
    body_len: u64,
    opts: &PutOptions,
    op: u64,
) -> Result<serde_json::Value, ApiError> {
    let target = match q.path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => {
            Some(crate::fs::parse_target(st.node.database(), p).map_err(crate::api_fs::fs_err)?)
        }
        None => None,
    };
    if let Some(t) = &target
        && let Some(slot) = crate::fs::existing_mutable(&st.node, t)
            .await
            .map_err(crate::api_fs::fs_err)?
    {
        let size = body_len;
        if size > crate::mutable::MAX_MUTABLE_SIZE as u64 {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} is a mutable file, which holds at most {} bytes",
                    t.display(),
                    crate::mutable::MAX_MUTABLE_SIZE
                ),
            ));
        }
        let content = source.read_all(size).await.map_err(ApiError::internal)?;
        let m = crate::slot::map(&st.node, &slot).await;
        let v = crate::slot::publish(&st.node, &slot, &content, &m)
            .await
            .map_err(|e| crate::api_fs::fs_err(e.into()))?;
        return Ok(serde_json::json!({
            "cap": crate::caps::Cap::Ssk(slot).to_string(),
            "size": size,
            "updated": true,
            "seqnum": v.seqnum,
            "path": t.display(),
        }));
    }
    let node = st.node.clone();
    // A body received first was the first half of the work; a streamed one is sent as it comes.
    let streamed = matches!(source, crate::client::Source::Stream(_));
    let half = if streamed { 0 } else { body_len / 2 };
    let progress =
        move |done: u64| node.op_progress(op, half + if streamed { done } else { done / 2 });
    let result = crate::client::upload_from(&st.node, source, opts, &progress)
        .await
        .map_err(|e| {
            let status = match e {
                crate::client::UploadError::Changed => StatusCode::CONFLICT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, e.to_string())
        })?;
    let mut json = serde_json::to_value(&result)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(t) = &target {
        let cap: crate::caps::Cap =
            result
                .cap
                .parse()
                .map_err(|e: crate::caps::CapParseError| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })?;
        crate::fs::link(&st.node, t, &cap, Some(result.size), true)
            .await
            .map_err(crate::api_fs::fs_err)?;
        json["path"] = t.display().into();
    }
    Ok(json)
}

async fn get_file(
    State(st): State<ApiState>,
    Path(cap): Path<String>,
) -> Result<Response, ApiError> {
    // Mutable files are small: read whole, sent in one body.
    if let Ok(crate::caps::Cap::Ssk(s)) = cap.trim().parse::<crate::caps::Cap>() {
        if s.dir {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "this cap names a directory: list it with `kith ls`",
            ));
        }
        let (content, _) = crate::slot::read(&st.node, &s)
            .await
            .map_err(|e| crate::api_fs::fs_err(e.into()))?;
        return Ok((
            [(header::CONTENT_TYPE, "application/octet-stream")],
            content,
        )
            .into_response());
    }
    let cap = parse_read_cap(&cap).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    // Decoded segments go to the HTTP body as they are, through a bounded channel (at most
    // BODY_CHUNKS segments in flight): each data block's buffer, decrypted in place, is a
    // chunk, and goes back to the block pool once on the socket. No copy in kith: a pipe read
    // back in pieces made three (memcpy was 11% of a downloading node), joining the blocks
    // into a fresh segment one, with the page faults of fresh buffers (~16% of it).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BodySegment>(BODY_CHUNKS);
    let node = st.node.clone();
    let id = node.remember_report(DownloadReport::default());
    let size = cap.size();
    let op = node.op_start("download", "download", Some(size));
    let progress_node = node.clone();
    let mut writer = BodySink {
        tx,
        progress: Box::new(move |done| progress_node.op_progress(op, done)),
        done: 0,
    };
    let task = tokio::spawn(async move {
        let res = node.get_segments(&cap, &mut writer).await;
        node.op_finish(op, res.as_ref().err().map(ToString::to_string));
        let report = match &res {
            Ok(r) => r.clone(),
            Err(e) => DownloadReport {
                error: Some(e.to_string()),
                ..DownloadReport::default()
            },
        };
        // The report first: a client that sees the body break off asks for it next.
        node.update_report(id, report.clone());
        if let Err(e) = &res {
            // Break the body off with an error (the connection is cut short), so that no
            // client takes a failed download for a complete file.
            writer.fail(&e.to_string()).await;
        }
        drop(writer);
        report
    });
    let first = rx.recv().await;
    if !matches!(first, Some(Ok(_))) {
        // Nothing came: either an empty file or a failure before the first byte.
        let report = task
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if let Some(e) = report.error {
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, e));
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    if let Ok(v) = header::HeaderValue::from_str(&id.to_string()) {
        headers.insert("x-kith-report", v);
    }
    let rest = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let body = Body::from_stream(body_chunks(futures::stream::iter(first).chain(rest)));
    Ok((headers, body).into_response())
}

async fn report(
    State(st): State<ApiState>,
    Path(id): Path<u64>,
) -> Result<impl IntoResponse, ApiError> {
    st.node
        .report(id)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such report"))
}

async fn shutdown(State(st): State<ApiState>) -> impl IntoResponse {
    let _ = st.shutdown.try_send(());
    Json(serde_json::json!({ "stopping": true }))
}

#[derive(Deserialize)]
struct CheckBody {
    /// A read cap or a verify cap.
    cap: String,
    #[serde(flatten)]
    opts: crate::checker::CheckOptions,
}

async fn check(
    State(st): State<ApiState>,
    Json(body): Json<CheckBody>,
) -> Result<impl IntoResponse, ApiError> {
    let target: crate::checker::CheckTarget =
        body.cap.parse().map_err(|e: crate::checker::CheckError| {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        })?;
    st.node
        .check(&target, body.opts)
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn repairer(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.node.repairer().status())
}

async fn repairer_run(State(st): State<ApiState>) -> impl IntoResponse {
    st.node.repairer().run_soon();
    Json(st.node.repairer().status())
}

/// What a running daemon writes to `api.json` so the CLI can find it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiInfo {
    /// Base URL, e.g. `http://127.0.0.1:41235`.
    pub url: String,
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's peer id.
    pub peer_id: String,
}

impl ApiInfo {
    /// The info for a daemon listening on `addr`.
    pub fn new(addr: SocketAddr, peer_id: String) -> Self {
        Self {
            url: format!("http://{addr}"),
            pid: std::process::id(),
            peer_id,
        }
    }
}

/// Segments of a download body in flight between the downloader and the HTTP connection.
const BODY_CHUNKS: usize = 4;

/// What the downloader hands the HTTP body: a segment's chunks, or why the download broke off.
type BodySegment = std::io::Result<Vec<bytes::Bytes>>;

/// A download's segments as chunks of an HTTP body, each of a segment's buffers as it is (a
/// data block's, decrypted in place), going back to the block pool once on the socket; reports
/// how many bytes went through to the operations list.
struct BodySink {
    tx: tokio::sync::mpsc::Sender<BodySegment>,
    /// Called with the bytes sent so far.
    progress: Box<dyn Fn(u64) + Send + Sync>,
    done: u64,
}

impl BodySink {
    /// Ends the body with an error instead of a clean end.
    async fn fail(&mut self, why: &str) {
        let _ = self
            .tx
            .send(Err(std::io::Error::other(why.to_owned())))
            .await;
    }
}

impl crate::client::SegmentSink for BodySink {
    async fn segment(&mut self, bytes: crate::codec::SegmentBytes) -> std::io::Result<()> {
        let n = bytes.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let chunks = bytes
            .into_pieces()
            .into_iter()
            .map(|p| bytes::Bytes::from_owner(crate::protocol::Recycled::new(p)))
            .collect();
        self.tx.send(Ok(chunks)).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        self.done += n;
        (self.progress)(self.done);
        Ok(())
    }

    async fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A body's segments as the stream of chunks HTTP sends (an error ends it).
fn body_chunks(
    segments: impl futures::Stream<Item = BodySegment>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    segments.flat_map(|seg| {
        futures::stream::iter(match seg {
            Ok(chunks) => chunks.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use futures::StreamExt;

    use super::{BodySegment, BodySink, body_chunks};
    use crate::{client::SegmentSink, codec::SegmentBytes};

    fn body(
        capacity: usize,
    ) -> (
        BodySink,
        tokio::sync::mpsc::Receiver<BodySegment>,
        Arc<AtomicU64>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let sink = BodySink {
            tx,
            progress: Box::new(move |done| s.store(done, Ordering::Relaxed)),
            done: 0,
        };
        (sink, rx, seen)
    }

    /// The chunks the HTTP body sends, in order.
    async fn chunks(
        mut rx: tokio::sync::mpsc::Receiver<BodySegment>,
    ) -> Vec<std::io::Result<bytes::Bytes>> {
        body_chunks(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
            .collect()
            .await
    }

    #[tokio::test]
    async fn download_segments_become_body_chunks_without_a_copy() {
        let (mut sink, rx, seen) = body(4);
        // Three segments of three pieces each (a 3-of-n file's data blocks), the last short.
        let mut addrs = Vec::new();
        for seg in 0..3u8 {
            let pieces: Vec<Vec<u8>> = (0..3u8)
                .map(|p| vec![seg * 3 + p; if seg == 2 && p == 2 { 1000 } else { 350 << 10 }])
                .collect();
            addrs.extend(pieces.iter().map(|p| p.as_ptr()));
            sink.segment(SegmentBytes::from(pieces))
                .await
                .expect("the body takes it");
        }
        sink.segment(SegmentBytes::default())
            .await
            .expect("an empty segment is no chunk");
        drop(sink);
        let got = chunks(rx).await;
        assert_eq!(got.len(), 9);
        for (i, (chunk, addr)) in got.iter().zip(addrs).enumerate() {
            let chunk = chunk.as_ref().expect("a chunk, not an error");
            assert_eq!(chunk.as_ptr(), addr, "piece {i} was copied");
            assert!(chunk.iter().all(|&b| usize::from(b) == i));
        }
        assert_eq!(seen.load(Ordering::Relaxed), 8 * (350 << 10) + 1000);
    }

    #[tokio::test]
    async fn a_failed_download_ends_the_body_with_an_error_and_a_gone_client_stops_it() {
        let (mut sink, rx, _) = body(4);
        sink.segment(vec![1; 10].into())
            .await
            .expect("the body takes it");
        sink.fail("server went away").await;
        drop(sink);
        let mut got = chunks(rx).await.into_iter();
        assert_eq!(got.next().map(|c| c.map(|b| b.len()).ok()), Some(Some(10)));
        let err = got.next().expect("an error chunk").expect_err("an error");
        assert_eq!(err.to_string(), "server went away");
        assert!(got.next().is_none());

        let (mut sink, rx, _) = body(1);
        drop(rx);
        let err = sink
            .segment(vec![1; 10].into())
            .await
            .expect_err("nobody reads");
        assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
