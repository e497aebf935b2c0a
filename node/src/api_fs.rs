//! The local API's directory and path routes (under `/api/v1`, same token and origin rules as
//! the rest of [`crate::api`]). Paths are `alias:a/b` or `<cap>/a/b`.
//!
//! - `GET /aliases`, `POST /aliases {name, cap, replace}`, `DELETE /aliases/{name}`
//! - `POST /mkdir {path?}` — a new directory (linked at `path`, parents created) -> `{cap}`
//! - `GET /ls?path=` — a directory's entries (or one file's), read-only views show no write caps
//! - `GET /resolve?path=` — the cap at a path
//! - `POST /ln {from, to, replace}` — link a cap (or the cap at a path) at `to`
//! - `POST /link-many {path, children: [{name, cap, size}], replace}` — many links, one write
//! - `POST /mv {from, to}`, `POST /rm {path}`
//! - `POST /mutable?path=` — body is the content (at most 4 MiB): updates the mutable file at
//!   `path` in place or creates one -> `{cap, updated, size}`
//! - `POST /deep-check {path, verify, repair}` over a whole tree
//! - `POST /snapshot {path, to?}` — an immutable copy of the tree -> `{cap}` (linked at `to`)

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{delete, get, post},
};
use futures::StreamExt;
use serde::Deserialize;

use crate::{
    api::{ApiError, ApiState},
    caps::Cap,
    fs::{self, FsError, Target},
    mutable::MAX_MUTABLE_SIZE,
};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/aliases", get(aliases).post(add_alias))
        .route("/aliases/{name}", delete(remove_alias))
        .route("/mkdir", post(mkdir))
        .route("/ls", get(ls))
        .route("/resolve", get(resolve))
        .route("/ln", post(ln))
        .route("/link-many", post(link_many))
        .route("/mv", post(mv))
        .route("/rm", post(rm))
        .route("/mutable", post(put_mutable))
        .route("/deep-check", post(deep_check))
        .route("/snapshot", post(snapshot))
}

pub(crate) fn fs_err(e: FsError) -> ApiError {
    let status = match &e {
        FsError::BadPath(_) | FsError::Dir(crate::dirnode::DirError::BadName(_)) => {
            StatusCode::BAD_REQUEST
        }
        FsError::NoAlias(_) | FsError::NotFound(_) => StatusCode::NOT_FOUND,
        FsError::NotADirectory(_) | FsError::Dir(crate::dirnode::DirError::Exists(_)) => {
            StatusCode::CONFLICT
        }
        FsError::ReadOnly(_) => StatusCode::FORBIDDEN,
        FsError::Slot(crate::slot::SlotError::Uncoordinated { .. }) => StatusCode::CONFLICT,
        FsError::Slot(crate::slot::SlotError::Mutable(
            crate::mutable::MutableError::NotAllowed(_),
        )) => StatusCode::FORBIDDEN,
        FsError::Slot(crate::slot::SlotError::Mutable(crate::mutable::MutableError::TooLarge(
            _,
        ))) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, e.to_string())
}

fn target(st: &ApiState, spec: &str) -> Result<Target, ApiError> {
    fs::parse_target(st.node.database(), spec).map_err(fs_err)
}

async fn aliases(State(st): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let list = crate::aliases::list(st.node.database())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(serde_json::json!(
        list.into_iter()
            .map(|(name, cap)| serde_json::json!({
                "name": name,
                "cap": cap.to_string(),
                "kind": fs::kind(&cap),
                "writable": cap.is_writable(),
            }))
            .collect::<Vec<_>>()
    )))
}

#[derive(Deserialize)]
struct AliasBody {
    name: String,
    cap: String,
    #[serde(default)]
    replace: bool,
}

async fn add_alias(
    State(st): State<ApiState>,
    Json(b): Json<AliasBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cap: Cap = b.cap.parse().map_err(|e: crate::caps::CapParseError| {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    crate::aliases::add(st.node.database(), &b.name, &cap, b.replace)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(Json(
        serde_json::json!({ "name": b.name, "kind": fs::kind(&cap) }),
    ))
}

async fn remove_alias(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let removed = crate::aliases::remove(st.node.database(), &name)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Json(serde_json::json!({ "removed": removed })))
}

#[derive(Deserialize)]
struct PathBody {
    path: Option<String>,
}

async fn mkdir(
    State(st): State<ApiState>,
    Json(b): Json<PathBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cap = match b.path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => {
            let t = target(&st, p)?;
            Cap::Ssk(fs::ensure_dir(&st.node, &t).await.map_err(fs_err)?)
        }
        None => Cap::Ssk(fs::empty_dir(&st.node).await.map_err(fs_err)?),
    };
    Ok(Json(serde_json::json!({ "cap": cap.to_string() })))
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
}

async fn ls(
    State(st): State<ApiState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &q.path)?;
    let cap = fs::resolve(&st.node, &t).await.map_err(fs_err)?;
    let name = t.display();
    if cap.is_dir() {
        let table = fs::read_dir(&st.node, &cap, &name).await.map_err(fs_err)?;
        Ok(Json(serde_json::json!({
            "path": name,
            "kind": "dir",
            "cap": cap.to_string(),
            "writable": cap.is_writable(),
            "entries": fs::entries(&table),
        })))
    } else {
        Ok(Json(serde_json::json!({
            "path": name,
            "kind": fs::kind(&cap),
            "cap": cap.to_string(),
            "writable": cap.is_writable(),
            "size": match &cap { Cap::Read(r) => Some(r.size()), _ => None },
        })))
    }
}

async fn resolve(
    State(st): State<ApiState>,
    Query(q): Query<PathQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &q.path)?;
    let cap = fs::resolve(&st.node, &t).await.map_err(fs_err)?;
    Ok(Json(
        serde_json::json!({ "cap": cap.to_string(), "kind": fs::kind(&cap) }),
    ))
}

#[derive(Deserialize)]
struct FromTo {
    from: String,
    to: String,
    #[serde(default)]
    replace: bool,
}

async fn ln(
    State(st): State<ApiState>,
    Json(b): Json<FromTo>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let cap = match b.from.parse::<Cap>() {
        Ok(c) => c,
        Err(_) => {
            let t = target(&st, &b.from)?;
            fs::resolve(&st.node, &t).await.map_err(fs_err)?
        }
    };
    let to = target(&st, &b.to)?;
    let size = match &cap {
        Cap::Read(r) => Some(r.size()),
        _ => None,
    };
    fs::link(&st.node, &to, &cap, size, b.replace)
        .await
        .map_err(fs_err)?;
    Ok(Json(serde_json::json!({ "linked": to.display() })))
}

#[derive(Deserialize)]
struct Child {
    name: String,
    cap: String,
    size: Option<u64>,
}

#[derive(Deserialize)]
struct LinkMany {
    path: String,
    children: Vec<Child>,
    #[serde(default)]
    replace: bool,
}

async fn link_many(
    State(st): State<ApiState>,
    Json(b): Json<LinkMany>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &b.path)?;
    let mut children = Vec::with_capacity(b.children.len());
    for c in b.children {
        let cap: Cap = c.cap.parse().map_err(|e: crate::caps::CapParseError| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("{}: {e}", c.name))
        })?;
        children.push((c.name, cap, c.size));
    }
    let n = children.len();
    fs::link_many(&st.node, &t, children, b.replace)
        .await
        .map_err(fs_err)?;
    Ok(Json(serde_json::json!({ "linked": n })))
}

async fn mv(
    State(st): State<ApiState>,
    Json(b): Json<FromTo>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (from, to) = (target(&st, &b.from)?, target(&st, &b.to)?);
    fs::rename(&st.node, &from, &to).await.map_err(fs_err)?;
    Ok(Json(
        serde_json::json!({ "moved": from.display(), "to": to.display() }),
    ))
}

#[derive(Deserialize)]
struct RmBody {
    path: String,
}

async fn rm(
    State(st): State<ApiState>,
    Json(b): Json<RmBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &b.path)?;
    let cap = fs::unlink(&st.node, &t).await.map_err(fs_err)?;
    Ok(Json(
        serde_json::json!({ "removed": t.display(), "kind": fs::kind(&cap) }),
    ))
}

#[derive(Deserialize)]
struct MutableQuery {
    path: Option<String>,
}

async fn put_mutable(
    State(st): State<ApiState>,
    Query(q): Query<MutableQuery>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = match q.path.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => Some(target(&st, p)?),
        None => None,
    };
    let content = read_body(body, MAX_MUTABLE_SIZE).await?;
    let size = content.len();
    let (cap, updated) = fs::put_mutable(&st.node, t.as_ref(), content)
        .await
        .map_err(fs_err)?;
    Ok(Json(
        serde_json::json!({ "cap": cap.to_string(), "updated": updated, "size": size }),
    ))
}

/// Reads a request body of at most `max` bytes.
pub(crate) async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        if out.len() + chunk.len() > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a mutable file holds at most {max} bytes; upload larger files immutable"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CheckBody {
    path: String,
    #[serde(default)]
    verify: bool,
    #[serde(default)]
    repair: bool,
    /// Walk the tree (default); `false` checks only what the path names.
    #[serde(default = "yes")]
    deep: bool,
}

fn yes() -> bool {
    true
}

async fn deep_check(
    State(st): State<ApiState>,
    Json(b): Json<CheckBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &b.path)?;
    let root = fs::resolve(&st.node, &t).await.map_err(fs_err)?;
    let report = if b.deep {
        crate::deepcheck::deep_check(&st.node, &root, &t.display(), b.verify, b.repair).await
    } else {
        crate::deepcheck::shallow(&st.node, &root, &t.display(), b.verify, b.repair).await
    };
    Ok(Json(serde_json::to_value(report).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    })?))
}

#[derive(Deserialize)]
struct SnapshotBody {
    path: String,
    to: Option<String>,
}

async fn snapshot(
    State(st): State<ApiState>,
    Json(b): Json<SnapshotBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let t = target(&st, &b.path)?;
    let root = fs::resolve(&st.node, &t).await.map_err(fs_err)?;
    let cap = fs::snapshot(&st.node, &root, &t.display())
        .await
        .map_err(fs_err)?;
    if let Some(to) = b.to.as_deref().filter(|p| !p.is_empty()) {
        let to = target(&st, to)?;
        fs::link(&st.node, &to, &cap, None, false)
            .await
            .map_err(fs_err)?;
    }
    Ok(Json(serde_json::json!({ "cap": cap.to_string() })))
}
