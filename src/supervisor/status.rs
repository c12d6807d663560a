//! Process status: the rows `localcluster run status` shows, and cluster
//! awareness through [`ClusterProbe`].
//!
//! The supervisor takes a snapshot of its table as [`ProcessStatus`] rows.
//! When a [`ClusterProbe`] is configured, each running process whose command
//! line names a client URL (`--advertise-client-urls`, else
//! `--listen-client-urls`; first URL of a comma list) is probed, and the rows
//! gain the Raft role, term and index. Probing happens outside the
//! supervisor's loop (in the control connection) with a timeout, so a hung
//! member never stalls supervision. The same probes resolve the process
//! name `leader` ([`find_leader`]).
//!
//! Rendering is deterministic (no terminal-width dependence) so it can be
//! compared against golden files in `tests/golden/` (`UPDATE_GOLDEN=1` rewrites them).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Asks a cluster member for its Raft status. The lead implements it with
/// an etcd client; tests use a fake.
pub trait ClusterProbe: Send + Sync + 'static {
    /// Ask the member serving `client_url` for its status; None if unreachable.
    fn probe(&self, client_url: String) -> BoxFuture<'static, Option<MemberProbe>>;
}

/// What a member said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberProbe {
    /// The answering member's id.
    pub member_id: u64,
    /// The leader it knows of (0 when none).
    pub leader_id: u64,
    /// Its current Raft term.
    pub raft_term: u64,
    /// Its Raft log index.
    pub raft_index: u64,
}

impl MemberProbe {
    /// Whether the member says it is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader_id != 0 && self.member_id == self.leader_id
    }
}

/// How long one probe may take before the member counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of a supervised process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcState {
    /// Running (or about to be stopped: see `stopping`).
    Running,
    /// Stopped with SIGSTOP by `run pause`.
    Paused,
    /// SIGTERM sent, waiting for it to exit.
    Stopping,
    /// Stopped on request (or never started).
    Stopped,
    /// Exited on its own.
    Exited,
}

impl ProcState {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Running => "running",
            ProcState::Paused => "paused",
            ProcState::Stopping => "stopping",
            ProcState::Stopped => "stopped",
            ProcState::Exited => "exited",
        }
    }

    /// Whether a process in this state is alive (has a pid).
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            ProcState::Running | ProcState::Paused | ProcState::Stopping
        )
    }
}

/// Raft details of a member, from a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// `leader` or `follower`.
    pub role: String,
    /// The member's id.
    pub member_id: u64,
    /// The leader it knows of.
    pub leader_id: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Raft index.
    pub raft_index: u64,
}

impl From<MemberProbe> for MemberStatus {
    fn from(p: MemberProbe) -> Self {
        MemberStatus {
            role: if p.is_leader() { "leader" } else { "follower" }.to_string(),
            member_id: p.member_id,
            leader_id: p.leader_id,
            raft_term: p.raft_term,
            raft_index: p.raft_index,
        }
    }
}

/// One row of `run status` (also its JSON form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Process name.
    pub name: String,
    /// Pid of the process (its group leader) while alive.
    pub pid: Option<u32>,
    /// Current state.
    pub state: ProcState,
    /// Seconds since it was (re)started, while alive.
    pub uptime_secs: Option<u64>,
    /// How many times it was started after the first time.
    pub restarts: u32,
    /// Exit code of its last run, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended its last run (e.g. `SIGKILL`), if any.
    pub exit_signal: Option<String>,
    /// The `PORT` it was given.
    pub port: u16,
    /// Client URL found in its command line, if any.
    pub client_url: Option<String>,
    /// Raft details, when a probe answered.
    pub member: Option<MemberStatus>,
}

/// Finds the client URL a process serves from its command line: the first
/// URL of `--advertise-client-urls`, else of `--listen-client-urls`.
pub fn client_url_of(command: &str) -> Option<String> {
    let words = shell_words(command);
    let find = |flag: &str| -> Option<String> {
        let eq = format!("{flag}=");
        let mut iter = words.iter();
        while let Some(w) = iter.next() {
            let value = if w == flag {
                iter.next().cloned()
            } else {
                w.strip_prefix(&eq).map(str::to_string)
            };
            if let Some(v) = value {
                let first = v.split(',').next().unwrap_or("").trim().to_string();
                if !first.is_empty() {
                    return Some(first);
                }
            }
        }
        None
    };
    find("--advertise-client-urls").or_else(|| find("--listen-client-urls"))
}

/// Splits a command line into words the way `sh` would for plain words:
/// whitespace separates, quotes group, backslash escapes. Good enough to find
/// flags; no expansion is done.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Probes every row that is alive and has a client URL, concurrently, each
/// within `timeout` (normally [`PROBE_TIMEOUT`]), and fills in `member`.
pub async fn probe_all(
    rows: &mut [ProcessStatus],
    probe: &Arc<dyn ClusterProbe>,
    timeout: Duration,
) {
    let futures = rows.iter().map(|row| {
        let url = row.client_url.clone().filter(|_| row.state.is_alive());
        let probe = Arc::clone(probe);
        async move {
            let url = url?;
            tokio::time::timeout(timeout, probe.probe(url))
                .await
                .ok()
                .flatten()
        }
    });
    let results = futures::future::join_all(futures).await;
    for (row, result) in rows.iter_mut().zip(results) {
        row.member = result.map(MemberStatus::from);
    }
}

/// The name of the process whose member says it is the leader.
pub fn find_leader(rows: &[ProcessStatus]) -> Option<String> {
    rows.iter()
        .find(|r| r.member.as_ref().is_some_and(|m| m.role == "leader"))
        .map(|r| r.name.clone())
}

/// `1h02m03s`, `4m05s` or `6s`.
pub fn format_uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Renders rows as a table. The cluster columns (ROLE, TERM, INDEX) appear
/// when `cluster` is true (a probe is configured and some process has a
/// client URL).
pub fn render_table(rows: &[ProcessStatus], cluster: bool) -> String {
    use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    let mut header = vec!["NAME", "PID", "STATE", "UPTIME", "RESTARTS", "EXIT"];
    if cluster {
        header.extend(["ROLE", "TERM", "INDEX"]);
    }
    table.set_header(header);
    let dash = || "-".to_string();
    for r in rows {
        let exit = match (&r.exit_signal, r.exit_code) {
            (Some(sig), _) => sig.clone(),
            (None, Some(code)) => code.to_string(),
            (None, None) => dash(),
        };
        let mut cells = vec![
            r.name.clone(),
            r.pid.map_or_else(dash, |p| p.to_string()),
            r.state.as_str().to_string(),
            r.uptime_secs.map_or_else(dash, format_uptime),
            r.restarts.to_string(),
            exit,
        ];
        if cluster {
            match &r.member {
                Some(m) => cells.extend([
                    m.role.clone(),
                    m.raft_term.to_string(),
                    m.raft_index.to_string(),
                ]),
                None => cells.extend([dash(), dash(), dash()]),
            }
        }
        table.add_row(cells);
    }
    for i in [1, 4] {
        if let Some(col) = table.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let text = table.to_string();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.strip_prefix(' ').unwrap_or(line).trim_end();
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: ProcState) -> ProcessStatus {
        ProcessStatus {
            name: name.into(),
            pid: None,
            state,
            uptime_secs: None,
            restarts: 0,
            exit_code: None,
            exit_signal: None,
            port: 5000,
            client_url: None,
            member: None,
        }
    }

    fn sample() -> Vec<ProcessStatus> {
        let mut a = row("m1", ProcState::Running);
        a.pid = Some(4242);
        a.uptime_secs = Some(3723);
        a.client_url = Some("http://127.0.0.1:2379".into());
        a.member = Some(MemberStatus::from(MemberProbe {
            member_id: 7,
            leader_id: 7,
            raft_term: 3,
            raft_index: 120,
        }));
        let mut b = row("member-2", ProcState::Exited);
        b.exit_code = Some(1);
        b.restarts = 2;
        let mut c = row("m3", ProcState::Stopped);
        c.exit_signal = Some("SIGKILL".into());
        let mut d = row("web", ProcState::Paused);
        d.pid = Some(17);
        d.uptime_secs = Some(65);
        vec![a, b, c, d]
    }

    /// Compares `got` with the golden file `tests/golden/<name>`;
    /// `UPDATE_GOLDEN=1 cargo test` rewrites the file instead.
    fn check_golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            got,
            want,
            "{} differs (UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn table_matches_golden_file() {
        check_golden("status_table.txt", &render_table(&sample(), false));
    }

    #[test]
    fn table_with_cluster_columns_matches_golden_file() {
        check_golden("status_table_cluster.txt", &render_table(&sample(), true));
    }

    #[test]
    fn json_uses_lowercase_states_and_nulls() {
        let v = serde_json::to_value(&sample()[1]).unwrap();
        assert_eq!(v["state"], "exited");
        assert_eq!(v["exit_code"], 1);
        assert!(v["pid"].is_null());
        let back: ProcessStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample()[1]);
    }

    #[test]
    fn client_url_comes_from_advertise_then_listen_flags() {
        let c = "localcluster member --name m1 --listen-client-urls http://127.0.0.1:1,http://x:2 --advertise-client-urls=http://127.0.0.1:2379,http://127.0.0.1:22379";
        assert_eq!(client_url_of(c).as_deref(), Some("http://127.0.0.1:2379"));
        let c = "etcd --listen-client-urls 'http://127.0.0.1:3379'";
        assert_eq!(client_url_of(c).as_deref(), Some("http://127.0.0.1:3379"));
        assert_eq!(client_url_of("sleep 10"), None);
        assert_eq!(client_url_of("x --advertise-client-urls"), None);
    }

    #[test]
    fn uptime_is_compact() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(59), "59s");
        assert_eq!(format_uptime(60), "1m00s");
        assert_eq!(format_uptime(86_399), "23h59m59s");
    }

    struct FakeProbe;
    impl ClusterProbe for FakeProbe {
        fn probe(&self, url: String) -> BoxFuture<'static, Option<MemberProbe>> {
            Box::pin(async move {
                let port: u64 = url.rsplit(':').next()?.parse().ok()?;
                match port {
                    1 | 2 => Some(MemberProbe {
                        member_id: port,
                        leader_id: 2,
                        raft_term: 5,
                        raft_index: 10 + port,
                    }),
                    3 => std::future::pending().await,
                    _ => None,
                }
            })
        }
    }

    #[tokio::test]
    async fn probes_fill_roles_and_find_the_leader() {
        let mut rows: Vec<_> = (1..=4)
            .map(|i| {
                let mut r = row(&format!("m{i}"), ProcState::Running);
                r.client_url = Some(format!("http://127.0.0.1:{i}"));
                r
            })
            .collect();
        rows[3].state = ProcState::Stopped;
        let probe: Arc<dyn ClusterProbe> = Arc::new(FakeProbe);
        probe_all(&mut rows, &probe, Duration::from_millis(100)).await;
        let roles: Vec<_> = rows
            .iter()
            .map(|r| r.member.as_ref().map(|m| m.role.as_str()))
            .collect();
        assert_eq!(roles, vec![Some("follower"), Some("leader"), None, None]);
        assert_eq!(find_leader(&rows).as_deref(), Some("m2"));
        assert_eq!(find_leader(&rows[..1]), None);
    }
}
