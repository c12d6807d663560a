//! Compiles the wire definitions in `proto/` with protox (pure Rust, no `protoc`)
//! and generates prost messages and tonic clients/servers for them, plus serde
//! impls (pbjson: proto3's JSON mapping, with the .proto field names as etcd's
//! grpc-gateway writes them) for the client API's packages; and links the
//! `localcluster` binary at a fixed address.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=proto");
    // The binary is linked at a fixed address (as Go links etcd): a
    // position-independent one makes the loader patch ~40k pointers at every
    // start, which reads 0.9 MB of relocations and copies 0.6 MB of tables
    // into private memory, 2 MiB of RSS per member for nothing. Libraries and
    // test binaries are left as they are.
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let descriptors = prost::Message::encode_to_vec(&fds);
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        // Raft messages stay slices of the frame they came in, and are parsed
        // without copying each entry's data (see raft/transport.rs).
        .bytes(".lcraftpb.RaftBatch.messages")
        // A put's key and value, decoded from a log entry as it is applied
        // (on every member), stay slices of the entry instead of two copies.
        .bytes(".etcdserverpb.PutRequest.key")
        .bytes(".etcdserverpb.PutRequest.value")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        // etcd's gateway ignores fields it does not know (a newer client's).
        .ignore_unknown_fields()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    Ok(())
}
