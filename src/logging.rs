//! A member process's log output, set up from etcd's flags: `--log-level`,
//! `--log-outputs` (`default`/`stderr`, `stdout`, file paths; several at once;
//! `systemd/journal` is standard error, which systemd sends to the journal)
//! and `--log-format` (`console` for people, `json` for machines).
//!
//! The JSON format is the shape of etcd's zap logger, one object per line:
//! `{"level":"info","ts":"2024-01-02T03:04:05.678Z","caller":"member/lifecycle.rs:60","msg":"ready to serve client requests","name":"m1",...}`
//! — `level`, `ts` (UTC, milliseconds), `caller` and `msg` first, then the
//! event's fields in order, their names in zap's kebab-case (`member-id`)
//! and lists of URLs as arrays. Log shippers configured for etcd read it as is.
//!
//! Only the binary installs a subscriber (the library never does): an
//! embedded cluster logs through whatever its host application set up.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Why the log outputs could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open log output {path}: {source}")]
pub struct LogOutputError {
    pub path: String,
    pub source: io::Error,
}

/// One writer for all of `outputs` (etcd's `--log-outputs` values).
pub fn make_writer(outputs: &[String]) -> Result<BoxMakeWriter, LogOutputError> {
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output.as_str() {
            // Under systemd, standard error already goes to the journal.
            "default" | "stderr" | "systemd/journal" => BoxMakeWriter::new(io::stderr),
            "stdout" => BoxMakeWriter::new(io::stdout),
            path => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| LogOutputError {
                        path: path.to_owned(),
                        source,
                    })?;
                BoxMakeWriter::new(Arc::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(w) => BoxMakeWriter::new(w.and(next)),
        });
    }
    Ok(writer.unwrap_or_else(|| BoxMakeWriter::new(io::stderr)))
}

/// The tracing filter directive for an etcd `--log-level`.
pub fn filter_directive(level: &str) -> String {
    let level = match level {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        _ => "info",
    };
    format!("{level},h2=warn,tower=warn,hyper=warn")
}

/// Installs the process's subscriber: `level` filter (overridden by
/// `RUST_LOG`), `format`, written to every one of `outputs`.
pub fn init(level: &str, format: LogFormat, outputs: &[String]) -> Result<(), LogOutputError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter_directive(level)));
    let writer = make_writer(outputs)?;
    let to_terminal = outputs.iter().all(|o| o == "default" || o == "stderr")
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A subscriber may already be installed (tests); keeping it is fine.
    let _ = match format {
        LogFormat::Console => builder.with_target(false).with_ansi(to_terminal).try_init(),
        LogFormat::Json => builder.event_format(ZapJson).try_init(),
    };
    Ok(())
}

/// Formats events as etcd's zap JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct ZapJson;

impl<S, N> FormatEvent<S, N> for ZapJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        writeln!(writer, "{}", zap_line(event, &now))
    }
}

/// One event as a zap JSON object (without the newline), stamped `ts`.
fn zap_line(event: &Event<'_>, ts: &str) -> String {
    let meta = event.metadata();
    let level = match *meta.level() {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG | tracing::Level::TRACE => "debug",
    };
    let caller = match (meta.file(), meta.line()) {
        (Some(file), Some(line)) => format!("{}:{line}", short_path(file)),
        _ => meta.target().to_owned(),
    };
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut out = String::with_capacity(128);
    out.push('{');
    push_pair(&mut out, "level", &serde_json::Value::from(level));
    out.push(',');
    push_pair(&mut out, "ts", &serde_json::Value::from(ts));
    out.push(',');
    push_pair(&mut out, "caller", &serde_json::Value::from(caller));
    out.push(',');
    push_pair(
        &mut out,
        "msg",
        &serde_json::Value::from(fields.message.unwrap_or_default()),
    );
    for (key, value) in &fields.rest {
        out.push(',');
        push_pair(&mut out, key, value);
    }
    out.push('}');
    out
}

/// The last directory and file name of `path`, as zap's short caller
/// (`member/lifecycle.rs`, `src/main.rs`).
fn short_path(path: &str) -> &str {
    match path.rmatch_indices('/').nth(1) {
        Some((i, _)) => &path[i + 1..],
        None => path,
    }
}

fn push_pair(out: &mut String, key: &str, value: &serde_json::Value) {
    // Serializing a string or a JSON value cannot fail.
    out.push_str(&serde_json::to_string(key).unwrap_or_default());
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

/// An event's fields: the message apart, the rest in order.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    rest: Vec<(String, serde_json::Value)>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            // zap's keys are kebab-case (`local-member-id`), tracing's
            // snake_case identifiers.
            self.rest.push((field.name().replace('_', "-"), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        // A list of strings debug-prints as a JSON array: zap writes one.
        let value = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(array @ serde_json::Value::Array(_)) => array,
            _ => text.into(),
        };
        self.put(field, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter;

    /// Captures what the subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn json_lines_have_zaps_shape() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .event_format(ZapJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let urls = vec!["http://127.0.0.1:2379".to_owned()];
            tracing::info!(name = %"m1", applied_index = 7u64, ok = true, client_urls = ?urls, "ready to serve client requests");
            tracing::warn!("a \"quoted\" warning");
        });
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with(r#"{"level":"info","ts":""#),
            "{}",
            lines[0]
        );
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["msg"], "ready to serve client requests");
        assert_eq!(v["name"], "m1");
        assert_eq!(v["applied-index"], 7);
        assert_eq!(
            v["client-urls"],
            serde_json::json!(["http://127.0.0.1:2379"])
        );
        assert_eq!(v["ok"], true);
        assert!(v["caller"].as_str().unwrap().starts_with("src/logging.rs:"));
        let ts = v["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2024-01-02T03:04:05.678Z".len(),
            "{ts}"
        );
        let w: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(w["level"], "warn");
        assert_eq!(w["msg"], "a \"quoted\" warning");
    }

    #[test]
    fn outputs_can_be_files_and_several() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        let outputs = vec![a.display().to_string(), b.display().to_string()];
        let writer = make_writer(&outputs).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .event_format(ZapJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || tracing::info!("to both"));
        for path in [a, b] {
            let text = std::fs::read_to_string(path).unwrap();
            assert!(text.contains(r#""msg":"to both""#), "{text}");
        }
        let bad = make_writer(&["/nonexistent-dir/x.log".to_owned()]).unwrap_err();
        assert!(bad
            .to_string()
            .starts_with("cannot open log output /nonexistent-dir/x.log"));
    }

    #[test]
    fn callers_are_short_like_zaps() {
        assert_eq!(short_path("src/member/lifecycle.rs"), "member/lifecycle.rs");
        assert_eq!(short_path("src/main.rs"), "src/main.rs");
        assert_eq!(
            short_path("/home/u/.cargo/registry/src/x/raft-0.7.0/src/raw_node.rs"),
            "src/raw_node.rs"
        );
        assert_eq!(short_path("lib.rs"), "lib.rs");
    }

    #[test]
    fn etcd_levels_map_to_filters() {
        assert!(filter_directive("debug").starts_with("debug,"));
        assert!(filter_directive("fatal").starts_with("error,"));
        assert!(filter_directive("info").starts_with("info,"));
    }
}
