//! `localcluster snapshot save|status|restore`: the command line of
//! [`localcluster::backup`], with the flags and output of `etcdctl snapshot`
//! (and `etcdutl snapshot`) so backup scripts carry over.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use localcluster::backup::{self, SnapshotStatus};
use localcluster::MemberConfig;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Stream a member's snapshot into FILE (as `etcdctl snapshot save`)
    Save {
        /// Where to write the snapshot
        file: PathBuf,
        /// The member to take it from (one endpoint, host:port or URL)
        #[arg(long, default_value = "127.0.0.1:2379")]
        endpoints: String,
        /// How long to wait for the connection
        #[arg(long, default_value = "5s", value_parser = localcluster::bench::parse_duration)]
        dial_timeout: Duration,
    },
    /// Print the hash (HashKV at its revision), revision, number of keys and size of a snapshot file
    Status {
        file: PathBuf,
        /// Output format
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = WriteOut::Simple)]
        write_out: WriteOut,
    },
    /// Build the data dir of a member of a new cluster from a snapshot file
    Restore(RestoreArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WriteOut {
    Simple,
    Table,
    Json,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot file
    file: PathBuf,
    /// Name of the member being restored
    #[arg(long, default_value = "default")]
    name: String,
    /// The data dir to create (default: NAME.etcd)
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A separate directory for the Raft log
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// The new cluster's members, as for `localcluster member`
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// The new cluster's token
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Accepted for etcdctl compatibility: the file's checksum is always checked
    #[arg(long)]
    skip_hash_check: bool,
}

/// Runs one snapshot command; returns the exit code.
pub fn run(command: SnapshotCommand) -> i32 {
    match execute(command) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn execute(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save {
            file,
            endpoints,
            dial_timeout,
        } => {
            let endpoint = endpoints.split(',').next().unwrap_or_default().to_string();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let size = rt.block_on(backup::save(&endpoint, &file, dial_timeout))?;
            println!(
                "Snapshot saved at {} ({})",
                file.display(),
                backup::human_size(size)
            );
        }
        SnapshotCommand::Status { file, write_out } => {
            let status = backup::status(&file)?;
            print!("{}", format_status(&status, write_out));
        }
        SnapshotCommand::Restore(args) => {
            let data_dir = args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
            let mut flags = vec![
                "--name".to_string(),
                args.name.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--initial-cluster".into(),
                args.initial_cluster.clone(),
                "--initial-cluster-token".into(),
                args.initial_cluster_token.clone(),
                "--initial-advertise-peer-urls".into(),
                args.initial_advertise_peer_urls.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            if let Some(wal) = &args.wal_dir {
                flags.push("--wal-dir".into());
                flags.push(wal.display().to_string());
            }
            let cfg = MemberConfig::from_args(&flags, &HashMap::new())?;
            let identity = backup::restore(&args.file, &cfg)?;
            println!(
                "restored snapshot {} into {} as member {} ({:x}) of cluster {:x}",
                args.file.display(),
                data_dir.display(),
                identity.name,
                identity.member_id,
                identity.cluster_id
            );
        }
    }
    Ok(())
}

fn format_status(s: &SnapshotStatus, write_out: WriteOut) -> String {
    let size = backup::human_size(s.total_size);
    match write_out {
        WriteOut::Simple => format!("{:x}, {}, {}, {size}\n", s.hash, s.revision, s.total_keys),
        WriteOut::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            s.hash, s.revision, s.total_keys, s.total_size
        ),
        WriteOut::Table => {
            use comfy_table::{presets, Table};
            let mut table = Table::new();
            table
                .load_preset(presets::ASCII_FULL_CONDENSED)
                .set_header(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"])
                .add_row([
                    format!("{:x}", s.hash),
                    s.revision.to_string(),
                    s.total_keys.to_string(),
                    size,
                ]);
            format!("{table}\n")
        }
    }
}
