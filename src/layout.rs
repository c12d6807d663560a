//! The standard local layout: three members named m1, m2, m3 with client ports
//! 2379/22379/32379 and peer ports 12380/22380/32380, as in etcd's own Procfile.
//!
//! `localcluster start` runs it when no Procfile is found, `localcluster procfile`
//! prints it, and the repository's root `Procfile` is the same text (a test keeps
//! them in step).

/// The client and peer ports of member `i` (0-based).
pub fn ports(i: usize) -> (u16, u16) {
    const CLIENT: [u16; 3] = [2379, 22379, 32379];
    const PEER: [u16; 3] = [12380, 22380, 32380];
    (CLIENT[i % 3], PEER[i % 3])
}

/// The Procfile of the 3-member cluster, keeping data under `data_dir`.
pub fn procfile(data_dir: &str) -> String {
    let cluster = (0..3)
        .map(|i| format!("m{}=http://127.0.0.1:{}", i + 1, ports(i).1))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = String::from(
        "# A 3-member cluster on one machine, laid out like etcd's own Procfile:\n\
         # clients on 2379/22379/32379, peers on 12380/22380/32380, data under .localcluster/.\n\
         # Run it with `localcluster start` (or `cargo run --release -- start`).\n",
    );
    for i in 0..3 {
        let (c, p) = ports(i);
        let n = i + 1;
        out.push_str(&format!(
            "m{n}: localcluster member --name m{n} --data-dir {data_dir}/m{n} \
             --listen-client-urls http://127.0.0.1:{c} --advertise-client-urls http://127.0.0.1:{c} \
             --listen-peer-urls http://127.0.0.1:{p} --initial-advertise-peer-urls http://127.0.0.1:{p} \
             --initial-cluster-token localcluster-1 --initial-cluster '{cluster}' --initial-cluster-state new\n"
        ));
    }
    out
}

/// The client endpoints of the layout, as etcdctl takes them.
pub fn endpoints() -> String {
    (0..3)
        .map(|i| format!("127.0.0.1:{}", ports(i).0))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_procfile_is_the_built_in_layout() {
        let root =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Procfile")).unwrap();
        assert_eq!(root, super::procfile(".localcluster"));
    }
}
