//! etcd's JSON gateway driven with the real `curl`, as etcd's documentation
//! does (`curl -L http://localhost:2379/v3/kv/put -X POST -d '{"key":...}'`):
//! keys and values in base64, 64-bit integers as strings, the .proto field
//! names, grpc-gateway's error bodies and streaming `{"result":...}` lines.
//! The answers are checked field by field against what etcd 3.4 returns.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{b64_str, curl, curl_post, http_get, run, skip_without_curl, Cluster};
use serde_json::Value;

/// "foo" -> "Zm9v" (standard base64, as the gateway takes bytes fields).
fn b64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn int(v: &Value) -> i128 {
    v.as_str()
        .unwrap_or_else(|| panic!("64-bit integers are strings in the gateway's JSON: {v}"))
        .parse()
        .unwrap()
}

fn started() -> Option<(Cluster, String)> {
    if skip_without_curl() {
        return None;
    }
    let c = Cluster::start(1, &[]);
    let base = c.members[0].client_url();
    Some((c, base))
}

#[test]
fn kv_put_range_txn_delete_and_compact_answer_like_etcd() {
    let Some((_c, base)) = started() else { return };
    let (code, put) = curl_post(
        &format!("{base}/v3/kv/put"),
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar")),
    );
    assert_eq!(code, 200, "{put}");
    let header = &put["header"];
    assert!(int(&header["cluster_id"]) != 0 && int(&header["member_id"]) != 0);
    let rev = int(&header["revision"]);
    assert!(int(&header["raft_term"]) >= 1);

    let (_, range) = curl_post(
        &format!("{base}/v3/kv/range"),
        &format!(r#"{{"key":"{}"}}"#, b64("foo")),
    );
    assert_eq!(int(&range["count"]), 1);
    let kv = &range["kvs"][0];
    assert_eq!(b64_str(&kv["key"]), "foo");
    assert_eq!(b64_str(&kv["value"]), "bar");
    assert_eq!(int(&kv["create_revision"]), rev);
    assert_eq!(int(&kv["mod_revision"]), rev);
    assert_eq!(int(&kv["version"]), 1);
    assert!(kv.get("lease").is_none(), "defaults are left out: {kv}");

    // lowerCamelCase is accepted on input, as grpc-gateway accepts it.
    let (_, keys) = curl_post(
        &format!("{base}/v3/kv/range"),
        &format!(
            r#"{{"key":"{}","rangeEnd":"{}","keysOnly":true}}"#,
            b64("f"),
            b64("g")
        ),
    );
    assert!(keys["kvs"][0].get("value").is_none());

    let (_, txn) = curl_post(
        &format!("{base}/v3/kv/txn"),
        &format!(
            r#"{{"compare":[{{"target":"VALUE","key":"{k}","value":"{v}","result":"EQUAL"}}],
                "success":[{{"request_put":{{"key":"{k}","value":"{n}"}}}}],
                "failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#,
            k = b64("foo"),
            v = b64("bar"),
            n = b64("baz")
        ),
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    assert!(txn["responses"][0].get("response_put").is_some(), "{txn}");

    let (_, del) = curl_post(
        &format!("{base}/v3/kv/deleterange"),
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("foo")),
    );
    assert_eq!(int(&del["deleted"]), 1);
    assert_eq!(b64_str(&del["prev_kvs"][0]["value"]), "baz");
    let now = int(&del["header"]["revision"]);

    let (code, compact) = curl_post(
        &format!("{base}/v3/kv/compaction"),
        &format!(r#"{{"revision":"{now}"}}"#),
    );
    assert_eq!(code, 200, "{compact}");
    let (code, err) = curl_post(
        &format!("{base}/v3/kv/range"),
        &format!(r#"{{"key":"{}","revision":"{rev}"}}"#, b64("foo")),
    );
    assert_eq!(code, 400);
    assert_eq!(
        err["error"],
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[test]
fn errors_have_grpc_gateways_status_and_body() {
    let Some((_c, base)) = started() else { return };
    // etcd's own error, InvalidArgument -> 400.
    let (code, err) = curl_post(&format!("{base}/v3/kv/range"), "");
    assert_eq!(code, 400);
    assert_eq!(
        err,
        serde_json::json!({"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3})
    );
    // NotFound -> 404.
    let (code, err) = curl_post(&format!("{base}/v3/lease/revoke"), r#"{"ID":"123"}"#);
    assert_eq!(code, 404);
    assert_eq!(err["error"], "etcdserver: requested lease not found");
    assert_eq!(err["code"], 5);
    // Malformed JSON -> 400 with the parser's complaint.
    let (code, err) = curl_post(&format!("{base}/v3/kv/put"), r#"{"key":"#);
    assert_eq!(code, 400);
    assert_eq!(err["code"], 3);
    // Only POST.
    let (code, _) = curl(&[&format!("{base}/v3/kv/range")]);
    assert_eq!(code, 405);
}

#[test]
fn watch_streams_result_lines_until_the_client_leaves() {
    let Some((_c, base)) = started() else { return };
    let (_, put) = curl_post(
        &format!("{base}/v3/kv/put"),
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("w"), b64("1")),
    );
    let rev = int(&put["header"]["revision"]);
    curl_post(
        &format!("{base}/v3/kv/deleterange"),
        &format!(r#"{{"key":"{}"}}"#, b64("w")),
    );
    // From the put's revision: both events come from history, no race.
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--max-time", "3", "-X", "POST"])
        .arg(format!("{base}/v3/watch"))
        .arg("-d")
        .arg(format!(
            r#"{{"create_request":{{"key":"{}","start_revision":"{rev}"}}}}"#,
            b64("w")
        ));
    let out = run(cmd, None, Duration::from_secs(20));
    // curl ends on its --max-time (code 28): the watch stays open, as etcd's.
    assert_eq!(out.code, Some(28), "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["result"]["created"], true, "{lines:?}");
    let events: Vec<&Value> = lines[1..]
        .iter()
        .flat_map(|l| l["result"]["events"].as_array().unwrap().iter())
        .collect();
    assert_eq!(events.len(), 2, "{lines:?}");
    assert!(
        events[0].get("type").is_none(),
        "PUT is the default, left out"
    );
    assert_eq!(b64_str(&events[0]["kv"]["value"]), "1");
    assert_eq!(events[1]["type"], "DELETE");
}

#[test]
fn lease_grant_keepalive_timetolive_leases_and_revoke() {
    let Some((_c, base)) = started() else { return };
    let (_, grant) = curl_post(&format!("{base}/v3/lease/grant"), r#"{"TTL":"60"}"#);
    assert_eq!(int(&grant["TTL"]), 60);
    let id = int(&grant["ID"]);
    curl_post(
        &format!("{base}/v3/kv/put"),
        &format!(
            r#"{{"key":"{}","value":"{}","lease":"{id}"}}"#,
            b64("l"),
            b64("v")
        ),
    );
    // A keepalive answers its request and ends (the request body is closed).
    let (code, text) = curl(&[
        "-X",
        "POST",
        &format!("{base}/v3/lease/keepalive"),
        "-d",
        &format!(r#"{{"ID":"{id}"}}"#),
    ]);
    assert_eq!(code, 200);
    let ka: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(int(&ka["result"]["ID"]), id);
    assert_eq!(int(&ka["result"]["TTL"]), 60);

    for path in ["/v3/lease/timetolive", "/v3/kv/lease/timetolive"] {
        let (_, ttl) = curl_post(
            &format!("{base}{path}"),
            &format!(r#"{{"ID":"{id}","keys":true}}"#),
        );
        assert_eq!(int(&ttl["grantedTTL"]), 60, "{ttl}");
        assert_eq!(b64_str(&ttl["keys"][0]), "l");
    }
    let (_, leases) = curl_post(&format!("{base}/v3/lease/leases"), "{}");
    assert_eq!(int(&leases["leases"][0]["ID"]), id);
    let (code, _) = curl_post(
        &format!("{base}/v3/lease/revoke"),
        &format!(r#"{{"ID":"{id}"}}"#),
    );
    assert_eq!(code, 200);
    let (_, range) = curl_post(
        &format!("{base}/v3/kv/range"),
        &format!(r#"{{"key":"{}"}}"#, b64("l")),
    );
    assert!(range.get("kvs").is_none(), "{range}");
}

#[test]
fn cluster_member_list_add_remove_and_maintenance_status() {
    let Some((c, base)) = started() else { return };
    let (_, list) = curl_post(&format!("{base}/v3/cluster/member/list"), "{}");
    let members = list["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "m0");
    assert_eq!(members[0]["peerURLs"][0], c.members[0].peer_url());
    assert_eq!(members[0]["clientURLs"][0], base);

    let (code, added) = curl_post(
        &format!("{base}/v3/cluster/member/add"),
        r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#,
    );
    assert_eq!(code, 200, "{added}");
    let new_id = int(&added["member"]["ID"]);
    assert_eq!(added["member"]["isLearner"], true);
    let (code, _) = curl_post(
        &format!("{base}/v3/cluster/member/remove"),
        &format!(r#"{{"ID":"{new_id}"}}"#),
    );
    assert_eq!(code, 200);

    let (_, status) = curl_post(&format!("{base}/v3/maintenance/status"), "{}");
    assert!(int(&status["dbSize"]) > 0);
    assert_eq!(int(&status["leader"]), int(&status["header"]["member_id"]));
    assert!(status["version"].as_str().unwrap().starts_with("3."));
}

#[test]
fn a_request_over_max_request_bytes_gets_etcds_error() {
    if skip_without_curl() {
        return;
    }
    let c = Cluster::start(1, &["--max-request-bytes", "1024"]);
    let base = c.members[0].client_url();
    let big = "x".repeat(4096);
    let (code, err) = curl_post(
        &format!("{base}/v3/kv/put"),
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("big"), b64(&big)),
    );
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["error"], "etcdserver: request is too large");
}

#[test]
fn v3beta_prefix_and_cors_preflight_answer_as_etcd_34() {
    let Some((_c, base)) = started() else { return };
    let (code, put) = curl_post(
        &format!("{base}/v3beta/kv/put"),
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("beta"), b64("1")),
    );
    assert_eq!(code, 200, "{put}");
    // A browser's preflight, and the CORS headers on the answer itself.
    let (code, head) = curl(&[
        "-X",
        "OPTIONS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{base}/v3/kv/range"),
    ]);
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(
        head.contains("access-control-allow-headers: accept, content-type, authorization"),
        "{head}"
    );
    let (_, head) = curl(&[
        "-X",
        "POST",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{base}/v3/kv/range"),
        "-d",
        &format!(r#"{{"key":"{}"}}"#, b64("beta")),
    ]);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{head}"
    );
}

#[test]
fn auth_routes_enable_auth_and_a_token_in_the_authorization_header_is_honoured() {
    let Some((_c, base)) = started() else { return };
    let post = |path: &str, body: &str| curl_post(&format!("{base}{path}"), body);
    assert_eq!(post("/v3/auth/role/add", r#"{"name":"root"}"#).0, 200);
    assert_eq!(
        post("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#).0,
        200
    );
    assert_eq!(
        post("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#).0,
        200
    );
    assert_eq!(post("/v3/auth/enable", "{}").0, 200);

    // Without a token a write is refused with etcd's message.
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("a"), b64("1"));
    let (code, err) = post("/v3/kv/put", &put);
    assert_ne!(code, 200, "{err}");
    assert_eq!(err["message"], "etcdserver: user name is empty", "{err}");

    let (code, auth) = post(
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
    );
    assert_eq!(code, 200, "{auth}");
    let token = auth["token"].as_str().unwrap().to_string();
    let header = format!("Authorization: {token}");
    let (code, text) = curl(&[
        "-X",
        "POST",
        &format!("{base}/v3/kv/put"),
        "-H",
        &header,
        "-d",
        &put,
    ]);
    assert_eq!(code, 200, "{text}");
    let (code, text) = curl(&[
        "-X",
        "POST",
        &format!("{base}/v3/auth/disable"),
        "-H",
        &header,
        "-d",
        "{}",
    ]);
    assert_eq!(code, 200, "{text}");
    assert_eq!(post("/v3/kv/put", &put).0, 200, "auth is off again");
}

#[test]
fn a_path_the_member_does_not_serve_is_404_so_a_probe_of_it_fails() {
    // As etcd answers: Go's mux outside the gateway, grpc-gateway inside it.
    // (etcd serves /debug/vars too, which is not built here.)
    let c = Cluster::start(1, &[]);
    let addr = c.members[0].endpoint();
    for path in ["/nope", "/health/", "/v2/keys", "/readyz/extra"] {
        assert_eq!(
            http_get(&addr, path),
            (404, "404 page not found\n".to_owned()),
            "{path}"
        );
    }
    assert_eq!(http_get(&addr, "/v3/nope"), (404, "Not Found\n".to_owned()));
    // What it serves is unchanged.
    assert_eq!(http_get(&addr, "/health").0, 200);
    assert_eq!(http_get(&addr, "/version").0, 200);
}

#[test]
fn health_and_version_answer_get_alone_as_etcds_do() {
    if skip_without_curl() {
        return;
    }
    let c = Cluster::start(1, &[]);
    let base = c.members[0].client_url();
    for path in ["/health", "/version"] {
        let url = format!("{base}{path}");
        for method in ["POST", "PUT", "HEAD"] {
            // (`--head`: curl sends HEAD and waits for no body.)
            let args = match method {
                "HEAD" => vec!["-i", "--head", &url],
                _ => vec!["-i", "-X", method, &url],
            };
            let (code, text) = curl(&args);
            let lower = text.to_lowercase();
            assert_eq!(code, 405, "{method} {path}: {text}");
            assert!(lower.contains("allow: get\r\n"), "{text}");
            assert!(
                lower.contains("content-type: text/plain; charset=utf-8\r\n"),
                "{text}"
            );
            if method != "HEAD" {
                assert!(text.ends_with("\r\n\r\nMethod Not Allowed\n"), "{text}");
            }
        }
    }
    // etcd writes /health's JSON with no content type, which Go's sniffing
    // names text/plain; /version says JSON.
    let (code, text) = curl(&["-i", &format!("{base}/health")]);
    assert_eq!(code, 200, "{text}");
    assert!(
        text.to_lowercase()
            .contains("content-type: text/plain; charset=utf-8\r\n"),
        "{text}"
    );
    assert!(text.ends_with(r#"{"health":"true"}"#), "{text}");
    let (_, text) = curl(&["-i", &format!("{base}/version")]);
    assert!(
        text.to_lowercase()
            .contains("content-type: application/json\r\n"),
        "{text}"
    );
}

#[test]
fn a_request_body_is_read_as_grpc_gateway_reads_it() {
    let Some((_c, base)) = started() else { return };
    let put = format!("{base}/v3/kv/put");
    let range = format!("{base}/v3/kv/range");
    let (foo, bar) = (b64("foo"), b64("bar"));
    // A field this version does not know (a newer client's) is ignored.
    let (code, out) = curl_post(
        &put,
        &format!(r#"{{"key":"{foo}","value":"{bar}","from_the_future":1}}"#),
    );
    assert_eq!(code, 200, "{out}");
    // Only the first object of a unary call's body is read.
    let (code, out) = curl_post(
        &put,
        &format!(
            r#"{{"key":"{foo}","value":"{}"}} {{"key":"{foo}","value":"{}"}} and then some"#,
            b64("first"),
            b64("second")
        ),
    );
    assert_eq!(code, 200, "{out}");
    let (_, got) = curl_post(&range, &format!(r#"{{"key":"{foo}"}}"#));
    assert_eq!(got["kvs"][0]["value"], b64("first"), "{got}");
}

#[test]
fn livez_and_readyz_answer_as_etcds_kubernetes_probes() {
    let mut c = Cluster::start(3, &[]);
    let addr = c.members[0].endpoint();
    let ok = || (200, "ok\n".to_owned());
    // Ready once the cluster has settled (an extra election may intervene).
    common::eventually(Duration::from_secs(30), "readyz", || {
        (http_get(&addr, "/readyz") == ok()).then_some(())
    });
    assert_eq!(http_get(&addr, "/livez"), ok());
    assert_eq!(
        http_get(&addr, "/readyz?verbose"),
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n\
             [+]non_learner ok\nok\n"
                .to_owned()
        )
    );
    assert_eq!(http_get(&addr, "/readyz/non_learner"), ok());
    assert_eq!(
        http_get(&addr, "/livez?verbose"),
        (200, "[+]serializable_read ok\nok\n".to_owned())
    );

    // Without a quorum the member still lives, but is not ready.
    c.kill9(1);
    c.kill9(2);
    let (code, body) = common::eventually(Duration::from_secs(30), "readyz to fail", || {
        let answer = http_get(&addr, "/readyz");
        (answer.0 != 200).then_some(answer)
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed: "), "{body}");
    assert!(body.contains("[+]serializable_read ok\n"), "{body}");
    assert!(body.ends_with("\n\n"), "{body:?}");
    assert_eq!(http_get(&addr, "/livez"), ok());
    assert_eq!(http_get(&addr, "/readyz?exclude=linearizable_read"), ok());
    assert_eq!(
        http_get(&addr, "/readyz/serializable_read?verbose"),
        (200, "[+]serializable_read ok\nok\n".to_owned())
    );
}
