//! Local cluster layouts: which members, on which ports, with which flags, written
//! out as a Procfile that `localcluster start` runs.
//!
//! The standard layout ([`Layout::standard`]) is three members named m1, m2, m3
//! with client ports 2379/22379/32379 and peer ports 12380/22380/32380, as in
//! etcd's own Procfile. `localcluster start` runs it when no Procfile is found,
//! `localcluster procfile` prints it ([`procfile`]), and the repository's root
//! `Procfile` is the same text (a test keeps them in step).
//!
//! [`Layout::free`] is the same shape on ports the OS hands out, for tests and
//! the failover demo, which must never collide with a cluster already running.
//! Picking a free port means binding port 0 and letting go of it, so another
//! program may take it before the member binds it: rare, and it shows as the
//! member failing to start.
//!
//! Invariant: member `i` (0-based) is named `m{i+1}` and keeps its data in
//! `{data_dir}/m{i+1}`; [`Layout::procfile`] lists the members in that order.

/// The client and peer ports of member `i` (0-based) in the standard layout.
pub fn ports(i: usize) -> (u16, u16) {
    const CLIENT: [u16; 3] = [2379, 22379, 32379];
    const PEER: [u16; 3] = [12380, 22380, 32380];
    (CLIENT[i % 3], PEER[i % 3])
}

/// The program a Procfile line runs unless told otherwise.
const PROGRAM: &str = "localcluster";

/// A cluster of members on 127.0.0.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `(client port, peer port)` of each member, m1 first.
    pub ports: Vec<(u16, u16)>,
    /// Where the members keep their data (`{data_dir}/mN`).
    pub data_dir: String,
    /// `--initial-cluster-token`.
    pub token: String,
    /// Flags appended to every member's command line, e.g.
    /// `--heartbeat-interval 20 --election-timeout 200` (empty for none).
    pub extra_flags: String,
    /// The program each line runs (`localcluster`, found on `PATH`, where the
    /// supervisor puts its own directory first; a path when the binary may be
    /// named otherwise).
    pub program: String,
}

impl Layout {
    /// The standard 3-member layout, keeping data under `data_dir`.
    pub fn standard(data_dir: &str) -> Layout {
        Layout {
            ports: (0..3).map(ports).collect(),
            data_dir: data_dir.to_string(),
            token: "localcluster-1".to_string(),
            extra_flags: String::new(),
            program: PROGRAM.to_string(),
        }
    }

    /// `members` members on free ports of 127.0.0.1, keeping data under
    /// `data_dir`. All ports are held at once while picking, so they differ.
    pub fn free(members: usize, data_dir: &str) -> std::io::Result<Layout> {
        let listeners = (0..2 * members)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Layout {
            ports: ports.chunks(2).map(|p| (p[0], p[1])).collect(),
            data_dir: data_dir.to_string(),
            token: "localcluster-1".to_string(),
            extra_flags: String::new(),
            program: PROGRAM.to_string(),
        })
    }

    /// The member names, m1 first.
    pub fn names(&self) -> Vec<String> {
        (1..=self.ports.len()).map(|n| format!("m{n}")).collect()
    }

    /// The client URL of each member, m1 first.
    pub fn client_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(c, _)| format!("http://127.0.0.1:{c}"))
            .collect()
    }

    /// The client endpoints, comma-separated, as etcdctl's `--endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.ports
            .iter()
            .map(|(c, _)| format!("127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One Procfile line per member (no comments).
    pub fn procfile(&self) -> String {
        let cluster = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = shell_quote(&self.token);
        let extra = if self.extra_flags.trim().is_empty() {
            String::new()
        } else {
            format!(" {}", self.extra_flags.trim())
        };
        let program = shell_quote(&self.program);
        let mut out = String::new();
        for (i, (c, p)) in self.ports.iter().enumerate() {
            let n = i + 1;
            let data = shell_quote(&format!("{}/m{n}", self.data_dir));
            out.push_str(&format!(
                "m{n}: {program} member --name m{n} --data-dir {data} \
                 --listen-client-urls http://127.0.0.1:{c} --advertise-client-urls http://127.0.0.1:{c} \
                 --listen-peer-urls http://127.0.0.1:{p} --initial-advertise-peer-urls http://127.0.0.1:{p} \
                 --initial-cluster-token {token} --initial-cluster '{cluster}' --initial-cluster-state new{extra}\n"
            ));
        }
        out
    }
}

/// `s` as one shell word: unchanged when it is made of safe characters, else in
/// single quotes.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./+@%,:=".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The Procfile of the standard 3-member cluster, keeping data under `data_dir`.
pub fn procfile(data_dir: &str) -> String {
    let mut out = String::from(
        "# A 3-member cluster on one machine, laid out like etcd's own Procfile:\n\
         # clients on 2379/22379/32379, peers on 12380/22380/32380, data under .localcluster/.\n\
         # Run it with `localcluster start` (or `cargo run --release -- start`).\n",
    );
    out.push_str(&Layout::standard(data_dir).procfile());
    out
}

/// The client endpoints of the standard layout, as etcdctl takes them.
pub fn endpoints() -> String {
    Layout::standard(".localcluster").endpoints()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_procfile_is_the_built_in_layout() {
        let root =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Procfile")).unwrap();
        assert_eq!(root, procfile(".localcluster"));
    }

    #[test]
    fn free_layouts_have_distinct_ports_and_carry_extra_flags() {
        let mut l = Layout::free(3, "/tmp/it's here").unwrap();
        l.extra_flags = "--election-timeout 200".into();
        let mut all: Vec<u16> = l.ports.iter().flat_map(|&(c, p)| [c, p]).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 6);
        let text = l.procfile();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1]
            .starts_with("m2: localcluster member --name m2 --data-dir '/tmp/it'\\''s here/m2' "));
        assert!(lines[2].ends_with("--initial-cluster-state new --election-timeout 200"));
        let url = crate::supervisor::status::client_url_of(lines[0]).unwrap();
        assert_eq!(url, l.client_urls()[0]);
        assert_eq!(l.names(), ["m1", "m2", "m3"]);
    }

    #[test]
    fn a_layout_can_run_the_binary_by_its_path() {
        let mut l = Layout::free(3, "/tmp/d").unwrap();
        l.program = "/opt/my builds/lc-test".into();
        let text = l.procfile();
        assert!(text
            .lines()
            .all(|line| line.contains(": '/opt/my builds/lc-test' member --name m")));
        let url = crate::supervisor::status::client_url_of(text.lines().next().unwrap()).unwrap();
        assert_eq!(url, l.client_urls()[0]);
    }
}
