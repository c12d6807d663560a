//! The control endpoint (`localcluster start` side) and its client
//! (`localcluster run`).
//!
//! # Transport
//!
//! TCP on `127.0.0.1` only (goreman's default port 8555, `-p` or
//! `LOCALCLUSTER_PORT` to change). The endpoint has no authentication — it
//! can kill and start processes — so it is bound to loopback, and a
//! connection whose peer is not a loopback address is answered with one
//! error line and closed ([`is_allowed_peer`]), should the socket ever be
//! reached some other way. A connection carries any number of
//! requests; each request is one JSON object on one line and gets exactly
//! one JSON response line, in order. Lines longer than [`MAX_LINE`] close
//! the connection.
//!
//! # Requests
//!
//! ```text
//! {"op":"list"}
//! {"op":"status"}
//! {"op":"start","names":["m1"]}        // also stop, restart, kill, pause, resume
//! {"op":"stop-all"}                    // also start-all, restart-all
//! ```
//!
//! The name `leader` (unless a process has that name) stands for the process
//! whose member reports itself as Raft leader, found with the
//! [`ClusterProbe`].
//!
//! # Responses
//!
//! ```text
//! {"ok":true,"names":["m1","m2"]}                      // list
//! {"ok":true,"status":[{...ProcessStatus...}],"cluster":true}  // status
//! {"ok":true}                                          // actions, once done
//! {"ok":false,"error":"unknown process \"m9\""}
//! ```
//!
//! Actions answer when they are complete: `stop` once the process has
//! exited (after SIGKILL at the latest), `restart` once it runs again. A
//! request naming several processes is validated as a whole first: one bad
//! name and nothing is done.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::cli::{OutputFormat, RunArgs, RunCommand};
use super::status::{
    find_leader, probe_all, render_table, ClusterProbe, ProcessStatus, PROBE_TIMEOUT,
};
use super::supervise::ControlMsg;

/// Longest request or response line accepted.
pub const MAX_LINE: u64 = 16 << 20;

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub op: RunCommand,
    /// Processes to act on (empty for list, status and the `-all` ops).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// One response line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Process names (`list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// The table (`status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<ProcessStatus>>,
    /// Whether cluster columns apply (`status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<bool>,
}

impl Response {
    fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Response::default()
        }
    }
}

/// Failure to bring up the control endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on 127.0.0.1:{port} for `localcluster run` (another supervisor running? pick a port with -p): {source}")]
pub struct BindError {
    /// The port asked for.
    pub port: u16,
    /// The socket error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the control endpoint on loopback.
pub async fn bind(port: u16) -> Result<TcpListener, BindError> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| BindError { port, source })
}

/// What a connection needs to answer requests.
#[derive(Clone)]
struct Ctx {
    supervisor: mpsc::Sender<ControlMsg>,
    probe: Option<Arc<dyn ClusterProbe>>,
}

/// Accepts connections until `shutdown` turns true; then aborts the open
/// connections and returns.
pub async fn serve(
    listener: TcpListener,
    supervisor: mpsc::Sender<ControlMsg>,
    probe: Option<Arc<dyn ClusterProbe>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Ctx { supervisor, probe };
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) if is_allowed_peer(&peer) => {
                        connections.spawn(connection(stream, ctx.clone()));
                    }
                    Ok((stream, peer)) => {
                        connections.spawn(refuse(stream, peer));
                    }
                    Err(_) => {}
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

/// Whether a connection from `peer` may drive the supervisor: loopback only.
pub fn is_allowed_peer(peer: &std::net::SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// Answers a connection from elsewhere with an error line and closes it.
async fn refuse(mut stream: TcpStream, peer: std::net::SocketAddr) {
    tracing::warn!(%peer, "refused a control connection: loopback only");
    let response = Response::error(format!(
        "the control endpoint accepts connections from loopback only, not from {}",
        peer.ip()
    ));
    if let Ok(mut out) = serde_json::to_vec(&response) {
        out.push(b'\n');
        let _ = stream.write_all(&out).await;
    }
}

async fn connection(stream: TcpStream, ctx: Ctx) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 || line.last() != Some(&b'\n') {
            return;
        }
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(request) => handle(request, &ctx).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = match serde_json::to_vec(&response) {
            Ok(out) => out,
            Err(e) => return tracing::warn!("cannot encode control response: {e}"),
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn ask<T>(
    ctx: &Ctx,
    msg: impl FnOnce(oneshot::Sender<T>) -> ControlMsg,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    let gone = || SHUTTING_DOWN.to_string();
    ctx.supervisor.send(msg(tx)).await.map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// Answers one request.
async fn handle(request: Request, ctx: &Ctx) -> Response {
    match handle_inner(request, ctx).await {
        Ok(response) => response,
        Err(message) => Response::error(message),
    }
}

async fn status(ctx: &Ctx) -> Result<(Vec<ProcessStatus>, bool), String> {
    let mut rows = ask(ctx, ControlMsg::Status).await?;
    let cluster = ctx.probe.is_some() && rows.iter().any(|r| r.client_url.is_some());
    if let (true, Some(probe)) = (cluster, &ctx.probe) {
        probe_all(&mut rows, probe, PROBE_TIMEOUT).await;
    }
    Ok((rows, cluster))
}

async fn handle_inner(request: Request, ctx: &Ctx) -> Result<Response, String> {
    let ok = Response {
        ok: true,
        ..Response::default()
    };
    match request.op {
        RunCommand::List => Ok(Response {
            names: Some(ask(ctx, ControlMsg::Names).await?),
            ..ok
        }),
        RunCommand::Status => {
            let (rows, cluster) = status(ctx).await?;
            Ok(Response {
                status: Some(rows),
                cluster: Some(cluster),
                ..ok
            })
        }
        op => {
            let mut names = request.names;
            if op.takes_names() && names.is_empty() {
                return Err(format!("{} needs at least one process name", op_name(op)));
            }
            if !op.takes_names() && !names.is_empty() {
                return Err(format!("{} takes no process names", op_name(op)));
            }
            if names.iter().any(|n| n == "leader") {
                let known = ask(ctx, ControlMsg::Names).await?;
                if !known.iter().any(|n| n == "leader") {
                    let (rows, _) = status(ctx).await?;
                    let leader = find_leader(&rows).ok_or("no leader found")?;
                    for n in names.iter_mut().filter(|n| *n == "leader") {
                        n.clone_from(&leader);
                    }
                }
            }
            let done = ask(ctx, |reply| ControlMsg::Act { op, names, reply }).await??;
            // Every action is waited for; the first that did not happen
            // is the answer. An answer never given means the supervisor
            // ended first: nothing says the action happened.
            let mut outcome = Ok(ok);
            for d in done {
                let answer = d.await.unwrap_or_else(|_| Err(SHUTTING_DOWN.to_string()));
                if let Err(why) = answer {
                    outcome = outcome.and(Err(why));
                }
            }
            outcome
        }
    }
}

/// Why a request got no answer: the supervisor ended meanwhile.
const SHUTTING_DOWN: &str = "the supervisor is shutting down";

/// The command's name as typed (`stop-all`).
pub fn op_name(op: RunCommand) -> String {
    serde_json::to_value(op)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{op:?}"))
}

/// Failure talking to the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listening, or the connection broke.
    #[error("cannot reach the supervisor on 127.0.0.1:{port} (is `localcluster start` running? -p sets the port): {source}")]
    Connect {
        /// The port tried.
        port: u16,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor closed the connection without answering.
    #[error("the supervisor closed the connection without answering")]
    NoAnswer,
    /// The answer was not valid.
    #[error("bad answer from the supervisor: {0}")]
    BadAnswer(#[from] serde_json::Error),
}

/// Sends one request to the supervisor on `port` and returns its answer.
pub async fn request(port: u16, request: &Request) -> Result<Response, ClientError> {
    let connect = |source| ClientError::Connect { port, source };
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(connect)?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(connect)?;
    let mut reader = BufReader::new(read).take(MAX_LINE);
    let mut answer = Vec::new();
    reader
        .read_until(b'\n', &mut answer)
        .await
        .map_err(connect)?;
    if answer.last() != Some(&b'\n') {
        return Err(ClientError::NoAnswer);
    }
    Ok(serde_json::from_slice(&answer)?)
}

/// `localcluster run`: sends the command, prints the answer; the exit code
/// is 0 on success and 1 (with one line on stderr) on failure.
pub async fn run_client(args: RunArgs) -> anyhow::Result<i32> {
    let req = Request {
        op: args.command,
        names: args.processes,
    };
    let response = match request(args.port, &req).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("localcluster run: {e}");
            return Ok(1);
        }
    };
    if !response.ok {
        let message = response.error.unwrap_or_else(|| "request failed".into());
        eprintln!("localcluster run {}: {message}", op_name(args.command));
        return Ok(1);
    }
    let mut out = String::new();
    if let Some(names) = response.names {
        for n in names {
            out.push_str(&n);
            out.push('\n');
        }
    }
    if let Some(rows) = response.status {
        match args.output {
            OutputFormat::Table => {
                out.push_str(&render_table(&rows, response.cluster.unwrap_or(false)))
            }
            OutputFormat::Json => {
                out.push_str(&serde_json::to_string_pretty(&rows)?);
                out.push('\n');
            }
        }
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_peers_may_drive_the_supervisor() {
        for ok in [
            "127.0.0.1:5000",
            "127.3.2.1:1",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:9",
        ] {
            assert!(is_allowed_peer(&ok.parse().unwrap()), "{ok}");
        }
        for refused in [
            "10.0.0.1:5000",
            "192.168.1.2:8555",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:9",
            "0.0.0.0:1",
        ] {
            assert!(!is_allowed_peer(&refused.parse().unwrap()), "{refused}");
        }
    }

    use super::*;

    #[test]
    fn requests_and_responses_have_the_documented_shape() {
        let r = Request {
            op: RunCommand::StopAll,
            names: vec![],
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"op":"stop-all"}"#);
        let r: Request = serde_json::from_str(r#"{"op":"stop","names":["m1"]}"#).unwrap();
        assert_eq!(r.op, RunCommand::Stop);
        assert_eq!(r.names, vec!["m1".to_string()]);
        let e = Response::error("unknown process \"x\"");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"ok":false,"error":"unknown process \"x\""}"#
        );
        assert_eq!(op_name(RunCommand::RestartAll), "restart-all");
    }
}
