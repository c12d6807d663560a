//! Child processes: spawning, process groups, signals, output pumping and
//! the orphan guard.
//!
//! Every Procfile command runs as `sh -c SCRIPT` in its own process group
//! (pgid = pid), with stdin from `/dev/null` and stdout and stderr on one
//! pipe to the log multiplexer (one pipe, as goreman and foreman give them,
//! so an error line stays where the child wrote it among its output).
//! Signals (`stop`, `kill`, `pause`, `resume`) go to the whole group.
//!
//! No child may outlive the supervisor, even one killed with SIGKILL:
//!
//! * Each child gets `PR_SET_PDEATHSIG(SIGKILL)` in `pre_exec`. Linux sends it
//!   when the *thread* that forked the child exits, so all forks happen on
//!   one dedicated, long-lived [`Spawner`] thread, never on a transient
//!   blocking-pool thread.
//! * PDEATHSIG is not inherited by grandchildren, so a simple command is run
//!   as `exec COMMAND` ([`shell_script`]): the shell becomes the program
//!   (same pid, PDEATHSIG kept), so `localcluster member ...` dies with us.
//! * For commands that are not simple (pipelines, lists, ...) the
//!   [`GroupGuard`] catches the rest: a tiny `sh` in its own process group,
//!   without PDEATHSIG, reads the set of live process groups from a pipe; when
//!   the pipe closes because the supervisor died, it SIGKILLs those groups.
//! * When a group leader exits, whatever is left in its group is killed
//!   too (and the log says so if it exited on its own), so output pipes
//!   reach EOF and nothing is left behind.
//!
//! Every child is reaped by the task that owns it ([`supervise_child`]).

use std::ffi::OsString;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe::Receiver;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use super::logmux::{LineSplitter, LogHandle};

/// How long a child's output may still be read after it exited; only
/// matters when a descendant escaped its process group and keeps the pipe.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// What it takes to start one process.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    /// Process name (for messages).
    pub name: String,
    /// The Procfile command.
    pub command: String,
    /// Its `PORT`.
    pub port: u16,
    /// Variables from the env files, shared by all processes.
    pub env: Arc<Vec<(String, String)>>,
    /// `PATH` for the child, if it should be set.
    pub path: Option<OsString>,
}

/// Shell builtins and keywords after which `exec` would break the command.
const NOT_EXECABLE: &[&str] = &[
    "!", "{", "}", "[[", "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while",
    "until", "for", "in", "function", "select", "time", ".", "source", "cd", "eval", "exec",
    "exit", "export", "readonly", "set", "unset", "shift", "trap", "return", "break", "continue",
    "wait", "ulimit", "umask", "alias", "unalias", "local", "read", "getopts", "command", "type",
    "hash", "jobs", "fg", "bg", "times", "builtin", "declare", "typeset", "let",
];

/// The script given to `sh -c` for a Procfile command: `exec COMMAND` when
/// the command is one simple command (so the program replaces the shell and
/// keeps its pid and PDEATHSIG), else the command unchanged. Leading
/// `VAR=value` assignments are kept before `exec` (sh exports them to the
/// program).
pub fn shell_script(command: &str) -> String {
    match exec_split(command) {
        Some(at) => format!("{}exec {}", &command[..at], &command[at..]),
        None => command.to_string(),
    }
}

/// Where to insert `exec` in `command`, or `None` if it is not a single
/// simple command.
fn exec_split(command: &str) -> Option<usize> {
    // Scan for unquoted control operators.
    let bytes = command.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(b'"') if b == b'\\' => i += 1,
            Some(b'"') if b == b'`' => return None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'\\' => i += 1,
                b';' | b'|' | b'(' | b')' | b'`' | b'\n' | b'{' | b'}' => return None,
                b'&' => {
                    // `>&` / `<&` are redirections; `&`, `&&` and `&>` are not
                    // simple.
                    let prev = if i > 0 { bytes[i - 1] } else { 0 };
                    if prev != b'>' && prev != b'<' {
                        return None;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    if quote.is_some() {
        return None;
    }
    // Skip leading assignments; the next word must be a plain command name.
    let mut pos = 0;
    loop {
        let rest = &command[pos..];
        let start = pos + (rest.len() - rest.trim_start().len());
        let word_end = command[start..]
            .find(char::is_whitespace)
            .map_or(command.len(), |e| start + e);
        let word = &command[start..word_end];
        if word.is_empty() {
            return None;
        }
        if is_assignment(word) {
            pos = word_end;
            continue;
        }
        let plain = word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./+@%,:".contains(&b));
        if !plain || NOT_EXECABLE.contains(&word) {
            return None;
        }
        return Some(start);
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, value)) => {
            super::procfile::is_valid_name(name)
                && !name.contains('-')
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && !value.contains(['\'', '"', '$', '\\'])
        }
        None => false,
    }
}

/// Builds the command for `spec`: `sh -c`, own process group, PDEATHSIG;
/// and the read end of the one pipe its stdout and stderr write to. The
/// command holds the write ends until it is dropped (after the spawn), so
/// the reader sees EOF once the child and everything it started are gone.
pub fn build_command(spec: &ProcSpec) -> io::Result<(Command, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(shell_script(&spec.command))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", spec.port.to_string())
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    if let Some(path) = &spec.path {
        cmd.env("PATH", path);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes the
    // async-signal-safe calls prctl and getppid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The supervisor may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::other("supervisor exited"));
            }
            Ok(())
        });
    }
    Ok((cmd, reader))
}

type SpawnJob = (Command, oneshot::Sender<io::Result<Child>>);

/// The one thread that forks children, so their PDEATHSIG is tied to a
/// thread that lives as long as the supervisor. Dropping it ends the thread.
pub struct Spawner {
    tx: Option<std::sync::mpsc::Sender<SpawnJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread; must be called inside a Tokio runtime.
    pub fn new() -> io::Result<Spawner> {
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let thread = std::thread::Builder::new()
            .name("localcluster-spawner".into())
            .spawn(move || {
                let _enter = runtime.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })?;
        Ok(Spawner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Spawns `cmd` on the spawner thread.
    pub async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        let gone = || io::Error::other("spawner thread is gone");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send((cmd, reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // The thread ends as soon as it sees the closed channel.
            let _ = thread.join();
        }
    }
}

/// Sends `sig` to the process group `pgid`; a group that is already gone
/// is not an error.
pub fn signal_group(pgid: u32, sig: Signal) -> io::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| io::Error::other("pid out of range"))?;
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether any process is left in the process group `pgid` (one we may not
/// signal counts; so does a zombie not reaped yet, which can make a note
/// about leftovers appear for a background child that had just exited).
fn group_alive(pgid: u32) -> bool {
    i32::try_from(pgid).is_ok_and(|pgid| {
        !matches!(
            killpg(Pid::from_raw(pgid), None),
            Err(nix::errno::Errno::ESRCH)
        )
    })
}

/// Describes how a child ended: `exited with code 1`, `killed by SIGKILL`.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("killed by {}", signal_name(sig)),
        (None, None) => "exited".to_string(),
    }
}

/// `SIGKILL` for 9; `signal 99` for numbers nix does not know.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// How a child's run ended, sent to the supervisor by [`supervise_child`].
#[derive(Debug)]
pub struct ExitEvent {
    /// Index of the process.
    pub proc: usize,
    /// Which run of the process this was.
    pub generation: u64,
    /// Its exit status (or why waiting failed).
    pub status: io::Result<ExitStatus>,
    /// Processes were left in its group when it ended (they were killed).
    pub leftovers: bool,
}

/// The read end of a child's output pipe, as the async reader
/// [`supervise_child`] takes; converted before the spawn, so a failure here
/// starts nothing.
pub fn output_reader(pipe: std::io::PipeReader) -> io::Result<Receiver> {
    Receiver::from_owned_fd(pipe.into())
}

/// Owns one running child: prints its output (read from `output`, the pipe
/// [`build_command`] gave it), reaps it, kills whatever is left in its
/// group, and reports the exit on `events`.
pub async fn supervise_child(
    mut child: Child,
    output: Receiver,
    proc: usize,
    generation: u64,
    log: LogHandle,
    events: mpsc::UnboundedSender<ExitEvent>,
) {
    let pgid = child.id();
    let readers = pump(output, proc, &log);
    tokio::pin!(readers);
    let mut readers_done = false;
    let status = tokio::select! {
        status = child.wait() => status,
        () = &mut readers => {
            readers_done = true;
            child.wait().await
        }
    };
    // Leftovers in the group would keep the pipes open and outlive us (a
    // command that started a helper in the background and exited); the
    // supervisor says so if the process ended on its own.
    let leftovers = pgid.is_some_and(group_alive);
    if let Some(pgid) = pgid {
        let _ = signal_group(pgid, Signal::SIGKILL);
    }
    if !readers_done {
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut readers).await;
    }
    let _ = events.send(ExitEvent {
        proc,
        generation,
        status,
        leftovers,
    });
}

/// Copies one output stream to the log, line by line.
async fn pump<R: AsyncRead + Unpin>(mut stream: R, proc: usize, log: &LogHandle) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                for line in splitter.push(&buf[..n]) {
                    log.line(proc, &line).await;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if let Some(line) = splitter.finish() {
        log.line(proc, &line).await;
    }
}

/// The orphan guard: kills the children's process groups if the supervisor
/// dies without doing it (see the module doc).
pub struct GroupGuard {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The guard's script: remember the last line of group ids; at EOF, kill
/// those groups.
const GUARD_SCRIPT: &str = "trap '' INT HUP
groups=
while IFS= read -r line; do groups=$line; done
for g in $groups; do kill -s KILL -- \"-$g\" 2>/dev/null; done
exit 0";

impl GroupGuard {
    /// Starts the guard (in its own process group, without PDEATHSIG).
    pub fn start() -> io::Result<GroupGuard> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(GroupGuard { child, stdin })
    }

    /// Tells the guard the current set of live process groups.
    pub async fn update(&mut self, pgids: &[u32]) {
        let line: Vec<String> = pgids.iter().map(u32::to_string).collect();
        let line = format!("{}\n", line.join(" "));
        if let Some(stdin) = &mut self.stdin {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                self.stdin = None;
            }
        }
    }

    /// Stops the guard (after every child is gone) and reaps it.
    pub async fn close(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\n").await;
        }
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_commands_are_execed() {
        assert_eq!(shell_script("sleep 10"), "exec sleep 10");
        assert_eq!(
            shell_script("localcluster member --name m1 --data-dir ./x 2>&1"),
            "exec localcluster member --name m1 --data-dir ./x 2>&1"
        );
        assert_eq!(
            shell_script("  echo \"a;b\" $PORT"),
            "  exec echo \"a;b\" $PORT"
        );
        assert_eq!(shell_script("FOO=bar BAZ=1 env"), "FOO=bar BAZ=1 exec env");
        assert_eq!(
            shell_script("./bin/server -p $PORT > log"),
            "exec ./bin/server -p $PORT > log"
        );
    }

    #[test]
    fn compound_commands_are_left_alone() {
        for c in [
            "sleep 1; echo done",
            "a | b",
            "a && b",
            "sleep 100 &",
            "(cd x && y)",
            "trap 'echo bye' TERM; sleep 10",
            "cd /tmp",
            "exec sleep 1",
            "echo $(date)",
            "echo `date`",
            "FOO=bar",
            "if true; then x; fi",
            "\"quoted cmd\" x",
            "echo 'unterminated",
            "A='x y' cmd",
        ] {
            assert_eq!(shell_script(c), c, "{c}");
        }
    }

    #[test]
    fn exit_descriptions_name_codes_and_signals() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(&ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
        assert_eq!(describe_exit(&ExitStatus::from_raw(9)), "killed by SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
