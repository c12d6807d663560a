//! Member URLs (`http://host:port`) and the `--initial-cluster` list.
//!
//! etcd keeps URLs as Go `url.URL` values and everything visible is their Go
//! string form: `http://localhost:2380`, no trailing slash, host spelled as the
//! user wrote it. Member IDs are a hash of that form (see `crate::identity`),
//! and etcdctl prints it, so [`EtcdUrl`] stores exactly that text and displays
//! it unchanged (Rust's `url::Url` would print `http://localhost:2380/`).
//!
//! Accepted: `http://HOST:PORT` and `https://HOST:PORT` where HOST is a name, an IPv4 address or a
//! bracketed IPv6 address, and PORT is 0..=65535; the scheme is matched case-
//! insensitively and stored lowercase (as Go does). Refused with a clear
//! message: `unix://`/`unixs://`, a path
//! (even a lone `/`, as etcd refuses it), a query, user info, a missing port.
//!
//! Lists follow etcd's `types.NewURLs`: comma-separated, each item trimmed,
//! sorted by string form. `--initial-cluster` follows `types.NewURLsMap`:
//! `name=url` pairs separated by commas, a name may repeat to give a member
//! several URLs, names are taken verbatim (not trimmed).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

/// Why a URL or URL list was refused. Displays as one line naming the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL scheme must be http, https, unix, or unixs: {0}")]
    Scheme(String),
    #[error("unix sockets are not supported: {0} (use http://host:port)")]
    Unix(String),
    #[error("URL address does not have the form \"host:port\": {0}")]
    NotHostPort(String),
    #[error("URL must not contain a path: {0}")]
    Path(String),
    #[error("URL must not contain a query or fragment: {0}")]
    Query(String),
    #[error("URL must not contain user info: {0}")]
    UserInfo(String),
    #[error("unexpected empty host ({0})")]
    EmptyHost(String),
    #[error("invalid host in URL: {0}")]
    InvalidHost(String),
    #[error("invalid port in URL (must be 0-65535): {0}")]
    InvalidPort(String),
    #[error("no valid URLs given")]
    NoUrls,
    #[error("expected IP in URL for binding ({0})")]
    NotIp(String),
    #[error("empty URL given for {0:?}")]
    EmptyMemberUrl(String),
}

/// One member URL, stored in Go's string form (`http://host:port`).
///
/// Equality, ordering and hashing are those of the string form, as in etcd.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdUrl {
    /// `http://` + host as written (IPv6 in brackets) + `:` + port as written.
    text: String,
    /// Host without brackets, as written.
    host: String,
    port: u16,
}

impl EtcdUrl {
    /// Parses one URL (surrounding whitespace is ignored, as etcd does).
    pub fn parse(input: &str) -> Result<EtcdUrl, UrlError> {
        let s = input.trim();
        let owned = || s.to_owned();
        let Some(colon) = s.find(':') else {
            return Err(UrlError::Scheme(owned()));
        };
        let scheme = s[..colon].to_ascii_lowercase();
        match scheme.as_str() {
            "http" | "https" => {}
            "unix" | "unixs" => return Err(UrlError::Unix(owned())),
            _ => return Err(UrlError::Scheme(owned())),
        }
        let Some(after) = s[colon + 1..].strip_prefix("//") else {
            return Err(UrlError::NotHostPort(owned()));
        };
        let end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::UserInfo(owned()));
        }
        // Same order of checks as etcd: host:port first, then the path.
        let (host, port_text) =
            split_host_port(authority).ok_or_else(|| UrlError::NotHostPort(owned()))?;
        if rest.starts_with('/') {
            return Err(UrlError::Path(owned()));
        }
        if !rest.is_empty() {
            return Err(UrlError::Query(owned()));
        }
        if host.is_empty() {
            return Err(UrlError::EmptyHost(owned()));
        }
        if !valid_host(host, authority.starts_with('[')) {
            return Err(UrlError::InvalidHost(owned()));
        }
        if port_text.is_empty()
            || port_text.len() > 5
            || !port_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(UrlError::InvalidPort(owned()));
        }
        let port: u16 = port_text
            .parse()
            .map_err(|_| UrlError::InvalidPort(owned()))?;
        Ok(EtcdUrl {
            text: format!("{scheme}://{authority}"),
            host: host.to_owned(),
            port,
        })
    }

    /// The Go string form, e.g. `http://localhost:2380`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scheme is `https` (the listener or peer speaks TLS).
    pub fn is_https(&self) -> bool {
        self.text.starts_with("https://")
    }

    /// The host as written, without IPv6 brackets (Go's `URL.Hostname()`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as written, IPv6 in brackets (Go's `URL.Host`).
    pub fn host_port(&self) -> &str {
        &self.text["http://".len()..]
    }

    /// The address to bind a listener on, without any DNS lookup.
    ///
    /// Like etcd, a listen URL must name an IP address or `localhost`
    /// (which binds 127.0.0.1); `0.0.0.0` and `[::]` bind every interface.
    pub fn bind_addr(&self) -> Result<SocketAddr, UrlError> {
        self.literal_ip()
            .map(|ip| SocketAddr::new(ip, self.port))
            .ok_or_else(|| UrlError::NotIp(self.text.clone()))
    }

    /// Every address this URL resolves to, for dialing. IP literals and
    /// `localhost` (127.0.0.1) resolve without DNS; other names use the
    /// system resolver.
    pub fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        if let Some(ip) = self.literal_ip() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }

    /// The first address of [`EtcdUrl::socket_addrs`].
    pub fn socket_addr(&self) -> io::Result<SocketAddr> {
        self.socket_addrs()?.into_iter().next().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.text),
            )
        })
    }

    /// The IP this URL names without DNS: an IP literal, or 127.0.0.1 for
    /// `localhost`. `None` for other names and for IPv6 zones.
    fn literal_ip(&self) -> Option<IpAddr> {
        if self.host.eq_ignore_ascii_case("localhost") {
            return Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        self.host.parse::<IpAddr>().ok()
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for EtcdUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EtcdUrl::parse(s)
    }
}

impl AsRef<str> for EtcdUrl {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl serde::Serialize for EtcdUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for EtcdUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EtcdUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Go's `net.SplitHostPort` on an authority: `host:port` or `[v6]:port`.
/// Returns `None` where Go reports "missing port" or "too many colons".
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let close = bracketed.find(']')?;
        let port = bracketed[close + 1..].strip_prefix(':')?;
        Some((&bracketed[..close], port))
    } else {
        let colon = authority.rfind(':')?;
        let host = &authority[..colon];
        if host.contains(':') {
            return None;
        }
        Some((host, &authority[colon + 1..]))
    }
}

fn valid_host(host: &str, bracketed: bool) -> bool {
    if bracketed {
        // An IPv6 zone is written percent-encoded: [fe80::1%25eth0].
        let address = host.split_once("%25").map_or(host, |(address, _)| address);
        return address.parse::<Ipv6Addr>().is_ok();
    }
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Parses a comma-separated URL list as etcd's `types.NewURLs` does: every
/// item trimmed and parsed, the result sorted by string form. An empty item
/// (e.g. a trailing comma) is an error, as in etcd. Duplicates are kept; see
/// `MemberConfig::validate`.
pub fn parse_url_list(text: &str) -> Result<Vec<EtcdUrl>, UrlError> {
    let mut urls = text
        .split(',')
        .map(EtcdUrl::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(UrlError::NoUrls);
    }
    urls.sort();
    Ok(urls)
}

/// Joins URLs with commas, the form etcd prints and accepts.
pub fn format_url_list(urls: &[EtcdUrl]) -> String {
    urls.iter()
        .map(EtcdUrl::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// The initial cluster: each member's name with its peer URLs (sorted), in
/// order of first appearance.
pub type InitialCluster = Vec<(String, Vec<EtcdUrl>)>;

/// Parses `--initial-cluster` (`name=url,name=url,...`) as etcd's
/// `types.NewURLsMap` does. Empty items are skipped; a name without `=url`
/// or with an empty first URL is refused; repeated names collect URLs.
pub fn parse_initial_cluster(text: &str) -> Result<InitialCluster, UrlError> {
    let mut raw: Vec<(String, Vec<&str>)> = Vec::new();
    for pair in text.split(',').filter(|pair| !pair.is_empty()) {
        let (name, url) = pair.split_once('=').unwrap_or((pair, ""));
        match raw.iter_mut().find(|(known, _)| known == name) {
            Some((_, urls)) => urls.push(url),
            None => raw.push((name.to_owned(), vec![url])),
        }
    }
    raw.into_iter()
        .map(|(name, texts)| {
            if texts.first().is_none_or(|first| first.is_empty()) {
                return Err(UrlError::EmptyMemberUrl(name));
            }
            let mut urls = texts
                .into_iter()
                .map(EtcdUrl::parse)
                .collect::<Result<Vec<_>, _>>()?;
            urls.sort();
            Ok((name, urls))
        })
        .collect()
}

/// Formats an initial cluster as `name=url,name=url,...`, members in the
/// given order (the inverse of [`parse_initial_cluster`]).
pub fn format_initial_cluster(cluster: &[(String, Vec<EtcdUrl>)]) -> String {
    let pairs: Vec<String> = cluster
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |url| format!("{name}={url}")))
        .collect();
    pairs.join(",")
}

/// Formats an initial cluster as etcd's `URLsMap.String()` does in messages:
/// all `name=url` pairs sorted.
pub fn format_initial_cluster_sorted(cluster: &[(String, Vec<EtcdUrl>)]) -> String {
    let mut pairs: Vec<String> = cluster
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |url| format!("{name}={url}")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> EtcdUrl {
        EtcdUrl::parse(s).unwrap()
    }

    #[test]
    fn display_is_go_string_form_without_trailing_slash() {
        let u = url("http://localhost:2380");
        assert_eq!(u.to_string(), "http://localhost:2380");
        assert_eq!(u.host(), "localhost");
        assert_eq!(u.port(), 2380);
        assert_eq!(u.host_port(), "localhost:2380");
    }

    #[test]
    fn scheme_is_lowercased_but_host_kept_as_written() {
        assert_eq!(
            url("HTTP://LocalHost:2380").to_string(),
            "http://LocalHost:2380"
        );
        assert_eq!(
            url("  http://127.0.0.1:2379 ").to_string(),
            "http://127.0.0.1:2379"
        );
    }

    #[test]
    fn ipv6_hosts_keep_brackets_in_text_only() {
        let u = url("http://[::1]:2380");
        assert_eq!(u.to_string(), "http://[::1]:2380");
        assert_eq!(u.host(), "::1");
        assert_eq!(u.host_port(), "[::1]:2380");
        assert_eq!(u.bind_addr().unwrap(), "[::1]:2380".parse().unwrap());
    }

    #[test]
    fn https_urls_are_accepted_and_say_so() {
        let u = EtcdUrl::parse("HTTPS://127.0.0.1:2379").unwrap();
        assert_eq!(u.as_str(), "https://127.0.0.1:2379");
        assert!(u.is_https());
        assert!(!EtcdUrl::parse("http://127.0.0.1:2379").unwrap().is_https());
    }

    #[test]
    fn unix_sockets_are_refused() {
        assert!(matches!(
            EtcdUrl::parse("unix://localhost:1"),
            Err(UrlError::Unix(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("unixs://x:1"),
            Err(UrlError::Unix(_))
        ));
    }

    #[test]
    fn malformed_urls_get_etcd_worded_errors() {
        assert_eq!(
            EtcdUrl::parse("localhost:2380").unwrap_err().to_string(),
            "URL scheme must be http, https, unix, or unixs: localhost:2380"
        );
        assert_eq!(
            EtcdUrl::parse("ftp://a:1").unwrap_err(),
            UrlError::Scheme("ftp://a:1".into())
        );
        assert_eq!(
            EtcdUrl::parse("http://localhost").unwrap_err().to_string(),
            "URL address does not have the form \"host:port\": http://localhost"
        );
        assert_eq!(
            EtcdUrl::parse("http://localhost:2380/")
                .unwrap_err()
                .to_string(),
            "URL must not contain a path: http://localhost:2380/"
        );
        assert!(matches!(
            EtcdUrl::parse("http://::1:2380"),
            Err(UrlError::NotHostPort(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http:localhost:2380"),
            Err(UrlError::NotHostPort(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://[::1]"),
            Err(UrlError::NotHostPort(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://a:1?x=1"),
            Err(UrlError::Query(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://u@a:1"),
            Err(UrlError::UserInfo(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://:2380"),
            Err(UrlError::EmptyHost(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://a b:1"),
            Err(UrlError::InvalidHost(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://[zz]:1"),
            Err(UrlError::InvalidHost(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://a:"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://a:65536"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(
            EtcdUrl::parse("http://a:x1"),
            Err(UrlError::InvalidPort(_))
        ));
        assert!(matches!(EtcdUrl::parse(""), Err(UrlError::Scheme(_))));
    }

    #[test]
    fn bind_addr_maps_localhost_and_wildcards_without_dns() {
        assert_eq!(
            url("http://localhost:2379").bind_addr().unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        assert_eq!(
            url("http://0.0.0.0:2379").bind_addr().unwrap(),
            "0.0.0.0:2379".parse().unwrap()
        );
        assert_eq!(
            url("http://[::]:2379").bind_addr().unwrap(),
            "[::]:2379".parse().unwrap()
        );
        assert_eq!(
            url("http://example.com:2379")
                .bind_addr()
                .unwrap_err()
                .to_string(),
            "expected IP in URL for binding (http://example.com:2379)"
        );
    }

    #[test]
    fn socket_addr_resolves_loopback_without_dns() {
        assert_eq!(
            url("http://localhost:12379").socket_addr().unwrap(),
            "127.0.0.1:12379".parse().unwrap()
        );
        assert_eq!(url("http://127.0.0.1:1").socket_addrs().unwrap().len(), 1);
    }

    #[test]
    fn url_lists_are_trimmed_and_sorted_like_etcd() {
        let urls = parse_url_list("http://b:2, http://a:1").unwrap();
        assert_eq!(format_url_list(&urls), "http://a:1,http://b:2");
        assert!(parse_url_list("http://a:1,").is_err());
        assert!(parse_url_list("").is_err());
    }

    #[test]
    fn initial_cluster_groups_urls_by_name_in_first_seen_order() {
        let cluster = parse_initial_cluster(
            "infra1=http://127.0.0.1:12380,infra0=http://127.0.0.1:2380,infra1=http://127.0.0.1:1",
        )
        .unwrap();
        assert_eq!(cluster.len(), 2);
        assert_eq!(cluster[0].0, "infra1");
        assert_eq!(
            format_url_list(&cluster[0].1),
            "http://127.0.0.1:1,http://127.0.0.1:12380"
        );
        assert_eq!(cluster[1].0, "infra0");
        assert_eq!(
            format_initial_cluster_sorted(&cluster),
            "infra0=http://127.0.0.1:2380,infra1=http://127.0.0.1:1,infra1=http://127.0.0.1:12380"
        );
    }

    #[test]
    fn initial_cluster_rejects_members_without_urls() {
        assert_eq!(
            parse_initial_cluster("mem1=,mem2=http://1.2.3.4:2379")
                .unwrap_err()
                .to_string(),
            "empty URL given for \"mem1\""
        );
        assert_eq!(
            parse_initial_cluster("mem1,mem2=http://1.2.3.4:2379").unwrap_err(),
            UrlError::EmptyMemberUrl("mem1".into())
        );
        assert!(matches!(
            parse_initial_cluster("default=http://localhost/"),
            Err(UrlError::NotHostPort(_))
        ));
    }

    #[test]
    fn initial_cluster_allows_empty_text_and_empty_items() {
        assert!(parse_initial_cluster("").unwrap().is_empty());
        assert_eq!(parse_initial_cluster(",a=http://x:1,,").unwrap().len(), 1);
    }

    #[test]
    fn serde_uses_the_go_string_form() {
        let u = url("http://127.0.0.1:2380");
        let yaml = serde_yaml::to_string(&u).unwrap();
        assert_eq!(yaml.trim(), "http://127.0.0.1:2380");
        let back: EtcdUrl = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back, u);
        assert!(serde_yaml::from_str::<EtcdUrl>("ftp://a:1").is_err());
    }

    fn arb_url() -> impl Strategy<Value = EtcdUrl> {
        let host = prop_oneof![
            Just("localhost".to_owned()),
            any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,5}){0,2}",
            Just("[::1]".to_owned()),
        ];
        (host, any::<u16>()).prop_map(|(host, port)| url(&format!("http://{host}:{port}")))
    }

    fn arb_cluster() -> impl Strategy<Value = InitialCluster> {
        proptest::collection::btree_map(
            "[a-zA-Z0-9_.-]{1,12}",
            proptest::collection::btree_set(arb_url(), 1..4),
            0..6,
        )
        .prop_map(|members| {
            members
                .into_iter()
                .map(|(name, urls)| (name, urls.into_iter().collect::<Vec<_>>()))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn url_display_round_trips(u in arb_url()) {
            prop_assert_eq!(EtcdUrl::parse(u.as_str()), Ok(u.clone()));
            prop_assert!(!u.to_string().ends_with('/'));
        }

        #[test]
        fn initial_cluster_format_parse_round_trips(cluster in arb_cluster()) {
            let text = format_initial_cluster(&cluster);
            prop_assert_eq!(parse_initial_cluster(&text), Ok(cluster));
        }

        #[test]
        fn url_list_format_parse_round_trips(urls in proptest::collection::btree_set(arb_url(), 1..5)) {
            let urls: Vec<EtcdUrl> = urls.into_iter().collect();
            prop_assert_eq!(parse_url_list(&format_url_list(&urls)), Ok(urls));
        }

        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = EtcdUrl::parse(&s);
            let _ = parse_url_list(&s);
            let _ = parse_initial_cluster(&s);
        }
    }
}
