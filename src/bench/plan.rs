//! Where each benchmark client sends its requests.
//!
//! Clients are spread over the endpoints round-robin (client `j` talks to
//! endpoint `j % E`). The `--conns` gRPC connections are spread the same way
//! (connection `i` goes to endpoint `i % E`), with at least one per endpoint so
//! that every endpoint gets its share; the clients of an endpoint share its
//! connections round-robin.

use super::BenchError;

/// Splits a comma-separated endpoint list (`host:port` or URLs) into URLs.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, BenchError> {
    let mut out = Vec::new();
    for raw in list.split(',') {
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let url = crate::client::url_of(raw);
        match url::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => out.push(url),
            _ => return Err(BenchError::BadEndpoint(raw.to_string())),
        }
    }
    if out.is_empty() {
        return Err(BenchError::NoEndpoints);
    }
    Ok(out)
}

/// The connection layout of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The endpoint of each connection.
    pub conn_endpoints: Vec<usize>,
    /// The connection of each client.
    pub client_conns: Vec<usize>,
}

impl Plan {
    /// Lays out `clients` clients and `conns` connections over `endpoints` endpoints
    /// (all at least 1).
    pub fn new(endpoints: usize, conns: usize, clients: usize) -> Plan {
        let endpoints = endpoints.max(1);
        let conns = conns.max(endpoints);
        let conn_endpoints: Vec<usize> = (0..conns).map(|i| i % endpoints).collect();
        let client_conns = (0..clients)
            .map(|j| {
                let e = j % endpoints;
                let mine: Vec<usize> = (0..conns).filter(|&i| i % endpoints == e).collect();
                mine[(j / endpoints) % mine.len()]
            })
            .collect();
        Plan {
            conn_endpoints,
            client_conns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_host_port_and_urls() {
        assert_eq!(
            parse_endpoints("127.0.0.1:2379, http://127.0.0.1:22379,").unwrap(),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        assert!(matches!(
            parse_endpoints(" , "),
            Err(BenchError::NoEndpoints)
        ));
        assert!(matches!(
            parse_endpoints("unix:///tmp/x"),
            Err(BenchError::BadEndpoint(_))
        ));
    }

    #[test]
    fn clients_go_round_robin_over_endpoints_and_share_their_connections() {
        let p = Plan::new(3, 1, 7);
        assert_eq!(p.conn_endpoints, vec![0, 1, 2]);
        assert_eq!(p.client_conns, vec![0, 1, 2, 0, 1, 2, 0]);

        let p = Plan::new(2, 4, 8);
        assert_eq!(p.conn_endpoints, vec![0, 1, 0, 1]);
        // endpoint 0 owns connections 0 and 2, endpoint 1 owns 1 and 3
        assert_eq!(p.client_conns, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        for (j, &c) in p.client_conns.iter().enumerate() {
            assert_eq!(p.conn_endpoints[c], j % 2);
        }
    }
}
