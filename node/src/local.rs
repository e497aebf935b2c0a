//! The local socket: `kith put FILE` hands the daemon the open file instead of its bytes.
//!
//! Over HTTP the daemon has to receive a file and spool it to `tmp/` before it can encode it
//! (the convergent key is a hash of the whole file, needed before the first segment is
//! encrypted): the bytes cross a socket, are written to disk and read back, and the node dir
//! needs as much free space as the file. A local client can do better: it opens the file and
//! passes the descriptor over `private/api.sock` (a Unix socket, `SCM_RIGHTS`); the daemon
//! hashes and encodes straight from it. Passing a descriptor, not a path, keeps the API's
//! rule that a token holder acts on the grid, not on the node's file system: the daemon reads
//! only what the client could open.
//!
//! The exchange: the client sends `u32` big-endian length + JSON `{"token", "query"}` (the
//! query string of `POST /api/v1/files`, at most [`MAX_REQUEST`] bytes), with the descriptor
//! attached to those bytes. The daemon answers with JSON lines: `{"done", "total"}` while it
//! works, then `{"ok": <the same body as the HTTP API>}` or `{"error", "status"}`. The token
//! is checked as on HTTP (the socket is also 0600 in a 0700 directory).

use std::{
    io::{Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::api::{ApiError, ApiState, PutQuery};

/// The socket's file name, under `private/`.
pub const SOCKET: &str = "api.sock";
/// Largest request (token and query string).
pub const MAX_REQUEST: usize = 16 * 1024;
/// How long a client may take to send its request, or to take an answer line.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client sends, with the file's descriptor.
#[derive(Debug, Serialize, Deserialize)]
pub struct PutRequest {
    /// The API token.
    pub token: String,
    /// The query string of `POST /api/v1/files` (`name=…&needed=…&path=…`), without `?`.
    #[serde(default)]
    pub query: String,
}

/// One line of the daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Answer {
    /// Progress in bytes: half of the file once the key pass is over, the rest as segments
    /// are sent.
    Progress {
        /// Done.
        done: u64,
        /// Out of.
        total: u64,
    },
    /// The upload's result, as the HTTP API returns it.
    Ok {
        /// The body.
        ok: serde_json::Value,
    },
    /// Why it failed.
    Error {
        /// The message.
        error: String,
        /// The HTTP status the same failure gets on the API.
        status: u16,
    },
}

/// Why a request on the socket was refused before any upload started.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The socket failed or the client went away.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The announced request is longer than [`MAX_REQUEST`].
    #[error("request of {0} bytes (at most {MAX_REQUEST})")]
    TooLong(usize),
    /// The request is not the expected JSON.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No descriptor, or more than one, came with the request.
    #[error("the request must carry exactly one file descriptor, it carried {0}")]
    Descriptors(usize),
}

/// Reads one request and its descriptor (blocking; the socket has a read timeout).
pub fn read_request(sock: &UnixStream) -> Result<(PutRequest, OwnedFd), RequestError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut len = [0u8; 4];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut len)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.bytes == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let mut sock_r = sock;
    if got.bytes < len.len() {
        sock_r.read_exact(&mut len[got.bytes..])?;
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_REQUEST {
        return Err(RequestError::TooLong(n));
    }
    let mut body = vec![0u8; n];
    sock_r.read_exact(&mut body)?;
    let req: PutRequest =
        serde_json::from_slice(&body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    if fds.len() != 1 {
        return Err(RequestError::Descriptors(fds.len()));
    }
    let fd = fds.pop().ok_or(RequestError::Descriptors(0))?;
    Ok((req, fd))
}

/// Where a node dir's socket is.
pub fn socket_path(dir: &crate::nodedir::NodeDir) -> PathBuf {
    dir.private().join(SOCKET)
}

/// Listens on `path` (replacing a stale socket) for `node`'s uploads, with the API `token`,
/// until the task is aborted. A path too long for a Unix socket, or a file system without
/// them, is an error: the daemon logs it and `kith put` uploads over HTTP.
pub fn listen(
    path: &Path,
    node: crate::node::NodeHandle,
    token: String,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    // The API's shutdown endpoint is not reachable from here: nothing listens on this sender.
    let st = crate::api::state(node, token, tokio::sync::mpsc::channel(1).0);
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "local socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let st = st.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(stream, st).await {
                    tracing::debug!(error = %e, "local socket client");
                }
            });
        }
    }))
}

async fn serve(stream: tokio::net::UnixStream, st: ApiState) -> std::io::Result<()> {
    let std_stream = stream.into_std()?;
    std_stream.set_nonblocking(false)?;
    std_stream.set_read_timeout(Some(SOCKET_TIMEOUT))?;
    std_stream.set_write_timeout(Some(SOCKET_TIMEOUT))?;
    let (std_stream, got) = tokio::task::spawn_blocking(move || {
        let r = read_request(&std_stream);
        (std_stream, r)
    })
    .await
    .map_err(std::io::Error::other)?;
    let answer = match got {
        Err(e) => Answer::Error {
            error: e.to_string(),
            status: 400,
        },
        Ok((req, fd)) => {
            if !bool::from(req.token.as_bytes().ct_eq(st.token().as_bytes())) {
                Answer::Error {
                    error: "missing or wrong API token (see private/api-token in the node dir)"
                        .into(),
                    status: 401,
                }
            } else {
                let out = std_stream.try_clone()?;
                match upload(&st, &req.query, std::fs::File::from(fd), out).await {
                    Ok(v) => Answer::Ok { ok: v },
                    Err(e) => Answer::Error {
                        error: e.error().to_owned(),
                        status: e.status().as_u16(),
                    },
                }
            }
        }
    };
    let mut line = serde_json::to_vec(&answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    tokio::task::spawn_blocking(move || (&std_stream).write_all(&line))
        .await
        .map_err(std::io::Error::other)?
}

async fn upload(
    st: &ApiState,
    query: &str,
    file: std::fs::File,
    mut out: UnixStream,
) -> Result<serde_json::Value, ApiError> {
    use axum::http::StatusCode;
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, e);
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| bad(e.to_string()))?;
    let axum::extract::Query(q) =
        axum::extract::Query::<PutQuery>::try_from_uri(&uri).map_err(|e| bad(e.body_text()))?;
    let meta = file.metadata().map_err(ApiError::internal)?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let total = meta.len();
    let (params, convergent) = crate::api::put_params(st, &q)?;
    let node = st.node.clone();
    let op = node.op_start("upload", q.name.as_deref().unwrap_or("upload"), Some(total));
    let mut guard = crate::api::OpGuard::new(&node, op);
    // Progress lines from the operation's counter, a few times a second. A client that went
    // away (Ctrl-C on `kith put`) fails the write and cancels the upload, as on HTTP.
    // The ticker stops as soon as the upload ends (its channel closes), not at its next tick.
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let ticker = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done_rx.recv_timeout(Duration::from_millis(250))
            {
                let Some(o) = node.operations().into_iter().find(|o| o.id == op) else {
                    return;
                };
                let mut line = serde_json::to_vec(&Answer::Progress {
                    done: o.done,
                    total,
                })
                .unwrap_or_default();
                line.push(b'\n');
                if out.write_all(&line).is_err() {
                    let _ = gone_tx.send(());
                    return;
                }
            }
        })
    };
    let opts = crate::client::PutOptions {
        params,
        convergent,
        key: None,
    };
    let gone = async {
        if gone_rx.await.is_err() {
            // The ticker ended without seeing the client go: only the upload can end this.
            std::future::pending::<()>().await;
        }
    };
    let res = tokio::select! {
        r = crate::api::store_put(st, &q, crate::client::Source::Open(&file), total, &opts, op) => r,
        () = gone => Err(ApiError::new(StatusCode::BAD_REQUEST, "the client went away")),
    };
    guard.error = res.as_ref().err().map(|e| e.error().to_owned());
    drop(guard);
    drop(done_tx);
    let _ = ticker.await;
    res
}

/// Uploads `file` through the daemon whose socket is `socket`: the client side of the
/// exchange (blocking). `progress` sees `(done, total)`. `Ok(Err(_))` is the daemon's refusal
/// (message, HTTP status); `Err(_)` means the socket could not be used (no daemon listening on
/// it: the caller may fall back to HTTP).
pub fn put(
    socket: &Path,
    token: &str,
    file: &std::fs::File,
    query: &str,
    mut progress: impl FnMut(u64, u64),
) -> std::io::Result<Result<serde_json::Value, (String, u16)>> {
    let sock = UnixStream::connect(socket)?;
    send_request(
        &sock,
        &PutRequest {
            token: token.to_owned(),
            query: query.to_owned(),
        },
        file,
    )?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(&sock));
    loop {
        let Some(line) = lines.next() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the local socket without an answer",
            ));
        };
        match serde_json::from_str::<Answer>(&line?) {
            Ok(Answer::Progress { done, total }) => progress(done, total),
            Ok(Answer::Ok { ok }) => return Ok(Ok(ok)),
            Ok(Answer::Error { error, status }) => return Ok(Err((error, status))),
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Sends a request with `file`'s descriptor attached (the first half of [`put`]).
pub fn send_request(
    sock: &UnixStream,
    req: &PutRequest,
    file: &std::fs::File,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;

    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let body = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let fds = [file.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    let sent = sendmsg(
        sock,
        &[std::io::IoSlice::new(&msg)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(std::io::Error::from)?;
    let mut sock = sock;
    sock.write_all(&msg[sent..])
}
