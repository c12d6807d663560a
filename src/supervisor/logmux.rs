//! Log multiplexing: every child's output, one prefixed line at a time.
//!
//! Each line a child writes to stdout or stderr is printed as
//! `name | line` (optionally `HH:MM:SS name | line`), the names padded to the
//! longest one and, when colour is on, the prefix coloured per process from a
//! fixed palette cycled in Procfile order. The supervisor's own messages about
//! a process (`m2 | exited with code 1`) use the same prefix.
//!
//! Design: readers split raw bytes on `\n` with [`LineSplitter`] (so a line is
//! never cut, however long, and a last line without newline is kept), format
//! each whole line into one buffer and send it over a bounded channel to a
//! single writer thread that owns the output. The writer writes each buffer
//! with one `write_all` under the stdout lock, so lines never interleave
//! mid-line; one channel keeps each process's lines in order; the bound gives
//! back-pressure (a slow terminal slows the readers, hence the children)
//! without ever blocking an async worker on a terminal write. Invalid UTF-8 is
//! replaced lossily. Write errors are ignored so children are never blocked
//! by a vanished reader; a reader that closed the pipe (`localcluster start |
//! head`) is reported once ([`LogMux::output_closed`]), and `start` then
//! stops everything as foreman does, rather than run on unseen.

use std::io::Write;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// ANSI colours (foreground codes) cycled over processes in Procfile order.
pub const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];

/// A line never grows past this many bytes in memory: a child writing more
/// without a newline gets it printed in pieces of this size.
pub const MAX_LINE: usize = 64 << 20;

/// How to decorate lines.
#[derive(Debug, Clone)]
pub struct Format {
    /// Process names, indexed like the Procfile entries.
    pub names: Vec<String>,
    /// Whether to emit ANSI colour codes.
    pub color: bool,
    /// Whether to put `HH:MM:SS ` (local time) before the name.
    pub timestamps: bool,
}

impl Format {
    /// Width every name is padded to: the longest name.
    pub fn width(&self) -> usize {
        self.names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
    }

    /// Formats one line of process `proc` (`line` without its `\n`), with
    /// the given timestamp text if timestamps are on.
    pub fn format(&self, proc: usize, line: &[u8], time: &str) -> Vec<u8> {
        let name = self.names.get(proc).map(String::as_str).unwrap_or("?");
        let text = String::from_utf8_lossy(line);
        let mut out = String::with_capacity(text.len() + self.width() + 24);
        if self.color {
            let code = PALETTE[proc % PALETTE.len()];
            out.push_str(&format!("\x1b[{code}m"));
        }
        if self.timestamps {
            out.push_str(time);
            out.push(' ');
        }
        out.push_str(&format!("{name:<width$} | ", width = self.width()));
        if self.color {
            out.push_str("\x1b[0m");
        }
        out.push_str(&text);
        out.push('\n');
        out.into_bytes()
    }
}

/// Whether to colour: `always`/`never`, or `auto` = stdout is a terminal and
/// `NO_COLOR` is unset or empty.
pub fn decide_color(
    choice: super::cli::ColorChoice,
    stdout_is_tty: bool,
    no_color: Option<&str>,
) -> bool {
    use super::cli::ColorChoice;
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout_is_tty && no_color.is_none_or(str::is_empty),
    }
}

/// Local wall-clock time as `HH:MM:SS`.
pub fn local_hms(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: localtime_r only writes into the zeroed `tm` we own; a null
    // return (never expected for a valid time) falls back to UTC.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if ok {
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let s = secs.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

/// Splits a byte stream into lines; keeps the unfinished tail between calls.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Adds `data` and returns the complete lines it finished (without `\n`).
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&rest[..pos]);
            lines.push(line);
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() >= MAX_LINE {
            lines.push(std::mem::take(&mut self.pending));
        }
        lines
    }

    /// The unfinished last line, if any (at end of stream).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// The multiplexer: owns the writer thread. Dropping it without
/// [`LogMux::shutdown`] detaches the thread, which ends once every
/// [`LogHandle`] is gone.
pub struct LogMux {
    handle: LogHandle,
    thread: JoinHandle<()>,
    closed: tokio_util::sync::CancellationToken,
}

/// A cheap, cloneable way to print lines through the multiplexer.
#[derive(Clone)]
pub struct LogHandle {
    tx: mpsc::Sender<Vec<u8>>,
    format: Arc<Format>,
}

impl LogMux {
    /// Starts the writer thread writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> std::io::Result<LogMux> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        let closed = tokio_util::sync::CancellationToken::new();
        let on_close = closed.clone();
        let thread = std::thread::Builder::new()
            .name("localcluster-log".into())
            .spawn(move || write_loop(out, rx, on_close))?;
        let format = Arc::new(format);
        Ok(LogMux {
            handle: LogHandle { tx, format },
            thread,
            closed,
        })
    }

    /// Resolves once the output's reader has gone (a write failed with a
    /// broken pipe). Lines are still drained, and dropped, after that.
    pub fn output_closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closed.clone().cancelled_owned()
    }

    /// A handle for readers and the supervisor.
    pub fn handle(&self) -> LogHandle {
        self.handle.clone()
    }

    /// Flushes everything sent so far and stops the writer thread. Other
    /// handles must have been dropped, or this waits for them.
    pub async fn shutdown(self) {
        let LogMux { handle, thread, .. } = self;
        drop(handle);
        // The thread ends when every sender is gone; joining is quick.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

fn write_loop(
    mut out: Box<dyn Write + Send>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    closed: tokio_util::sync::CancellationToken,
) {
    // Errors are not fatal: keep draining so that the children are never
    // blocked on a reader that went away; a broken pipe is reported.
    let report = |result: std::io::Result<()>| {
        if result.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
            closed.cancel();
        }
    };
    while let Some(first) = rx.blocking_recv() {
        report(out.write_all(&first));
        while let Ok(more) = rx.try_recv() {
            report(out.write_all(&more));
        }
        report(out.flush());
    }
}

impl LogHandle {
    /// Prints one line (without its `\n`) for process `proc`.
    pub async fn line(&self, proc: usize, line: &[u8]) {
        let time = if self.format.timestamps {
            local_hms(SystemTime::now())
        } else {
            String::new()
        };
        let bytes = self.format.format(proc, line, &time);
        let _ = self.tx.send(bytes).await;
    }

    /// Prints a supervisor message about process `proc`.
    pub async fn note(&self, proc: usize, message: &str) {
        self.line(proc, message.as_bytes()).await;
    }

    /// Prints a line with no prefix (the banner).
    pub async fn plain(&self, text: &str) {
        let _ = self.tx.send(format!("{text}\n").into_bytes()).await;
    }
}

/// Writer for tests and embedding: appends to a shared buffer.
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut v) => v.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    /// Everything written so far, lossily as text.
    pub fn text(&self) -> String {
        let v = match self.0.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        String::from_utf8_lossy(&v).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::cli::ColorChoice;

    fn fmt(color: bool, timestamps: bool) -> Format {
        Format {
            names: vec!["m1".into(), "web-long".into(), "db".into()],
            color,
            timestamps,
        }
    }

    #[test]
    fn pads_names_to_the_longest() {
        let f = fmt(false, false);
        assert_eq!(f.format(0, b"hello", ""), b"m1       | hello\n");
        assert_eq!(f.format(1, b"x", ""), b"web-long | x\n");
        assert_eq!(f.format(2, b"", ""), b"db       | \n");
    }

    #[test]
    fn colours_the_prefix_per_process() {
        let f = fmt(true, false);
        let got = String::from_utf8(f.format(1, b"hi", "")).unwrap();
        assert_eq!(got, "\x1b[33mweb-long | \x1b[0mhi\n");
        let got = String::from_utf8(f.format(0, b"hi", "")).unwrap();
        assert_eq!(got, "\x1b[36mm1       | \x1b[0mhi\n");
    }

    #[test]
    fn timestamps_go_before_the_name() {
        let f = fmt(false, true);
        assert_eq!(f.format(2, b"up", "12:34:56"), b"12:34:56 db       | up\n");
        let t = local_hms(SystemTime::now());
        assert_eq!(t.len(), 8);
        assert_eq!(t.as_bytes()[2], b':');
    }

    #[test]
    fn json_log_lines_keep_their_prefix_and_stay_parseable() {
        // A member run with --log-format json writes one zap object per line,
        // possibly split across reads.
        let line = br#"{"level":"info","ts":"2024-01-02T03:04:05.678Z","caller":"member/lifecycle.rs:60","msg":"ready to serve client requests","name":"m1"}"#;
        let mut s = LineSplitter::default();
        assert!(s.push(&line[..40]).is_empty());
        let mut rest = line[40..].to_vec();
        rest.push(b'\n');
        let lines = s.push(&rest);
        assert_eq!(lines.len(), 1);
        let f = fmt(false, false);
        let out = String::from_utf8(f.format(0, &lines[0], "")).unwrap();
        let json = out.strip_prefix("m1       | ").unwrap().trim_end();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["msg"], "ready to serve client requests");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let f = fmt(false, false);
        let got = String::from_utf8(f.format(0, b"a\xffb", "")).unwrap();
        assert_eq!(got, "m1       | a\u{fffd}b\n");
    }

    #[test]
    fn splitter_keeps_partial_lines_until_finished() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"par").is_empty());
        assert_eq!(
            s.push(b"tial\nnext\n\nta"),
            vec![b"partial".to_vec(), b"next".to_vec(), Vec::new()]
        );
        assert_eq!(s.finish(), Some(b"ta".to_vec()));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn colour_choice_honours_tty_and_no_color() {
        assert!(decide_color(ColorChoice::Auto, true, None));
        assert!(decide_color(ColorChoice::Auto, true, Some("")));
        assert!(!decide_color(ColorChoice::Auto, true, Some("1")));
        assert!(!decide_color(ColorChoice::Auto, false, None));
        assert!(decide_color(ColorChoice::Always, false, Some("1")));
        assert!(!decide_color(ColorChoice::Never, true, None));
    }

    #[tokio::test]
    async fn writes_whole_lines_in_order_through_the_thread() {
        let buf = SharedBuf::default();
        let mux = LogMux::new(Box::new(buf.clone()), fmt(false, false)).unwrap();
        let h = mux.handle();
        h.plain("banner").await;
        let big = vec![b'x'; 1 << 20];
        h.line(0, b"one").await;
        h.line(1, &big).await;
        h.note(2, "exited with code 1").await;
        drop(h);
        mux.shutdown().await;
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "banner");
        assert_eq!(lines[1], "m1       | one");
        assert_eq!(lines[2].len(), "web-long | ".len() + (1 << 20));
        assert_eq!(lines[3], "db       | exited with code 1");
    }
}
