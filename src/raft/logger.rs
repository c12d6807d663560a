//! A `slog` drain that forwards raft-rs's log records to `tracing` under the
//! target `raft`, so `RUST_LOG=raft=debug` shows elections, votes and commits
//! next to the member's own logs.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// The drain; stateless.
pub struct TracingDrain;

struct KvFormatter(String);

impl slog::Serializer for KvFormatter {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // raft-rs logs several records per message at its debug level: skip the
        // formatting unless someone listens.
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Debug | Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvFormatter(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{}", kv.0),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            Level::Info => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// A root logger for one raft node.
pub fn logger(member: &str) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("member" => member.to_string()),
    )
}
