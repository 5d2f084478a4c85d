//! Per-tool policy: which caller may call which tool, prompt or resource, with which arguments,
//! through the real binary, with the official MCP Python SDK as the client and tokens from the
//! test authorization server's key. Every rule kind has its reject twin, a refused call never
//! reaches the MCP server, and `check` refuses rules that can never match.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use mcp_edge_tests::auth_server::{mint, now, AuthServer};
use mcp_edge_tests::*;

const AUD: &str = "api://mcp-tests";

/// The host block: `/mcp` (OAuth, rules on scopes, groups, claims and arguments) and
/// `/keys/mcp` (API keys, a rule on the key's name), both in front of the tool server.
fn host_yaml(tools: u16, json_tools: u16, issuer: &str, ca: &Path) -> String {
    format!(
        r#"hosts:
  localhost:
    tls: none
    routes:
      - path: /mcp
        upstream: "http://127.0.0.1:{tools}"
      - path: /legacy
        upstream: "http://127.0.0.1:{tools}"
    auth:
      oauth:
        issuer: {issuer}
        ca: {ca}
        scopes: [mcp.tools]
        audiences: ["{AUD}"]
        claims: {{ groups: groups }}
    policy:
      default: deny
      rules:
        - name: readers-never-delete
          effect: deny
          who: {{ groups: [readers] }}
          tools: ["delete_*"]
        - name: analysts-query
          effect: allow
          who: {{ scopes: [db.query] }}
          tools: [query]
          arguments: {{ db: {{ one_of: [analytics, reporting] }} }}
        - name: no-forced-deletes
          effect: deny
          tools: ["delete_*"]
          arguments: {{ force: {{ equals: true }} }}
        - name: never-etc
          effect: deny
          tools: ["delete_*"]
          arguments: {{ path: {{ prefix: /etc/ }} }}
        - name: ops-delete-tmp
          effect: allow
          who: {{ claims: {{ dept: ops }} }}
          tools: ["delete_*"]
          arguments: {{ path: {{ prefix: /tmp/ }} }}
        - name: fast-lowercase
          effect: allow
          who: authenticated
          tools: [fast]
          arguments: {{ text: {{ regex: "^[a-z ]+$" }} }}
        - name: public-docs
          effect: allow
          resources: ["docs://public/*", "file:///public/*"]
        - name: summary-prompt
          effect: allow
          prompts: [summary]
          arguments: {{ topic: {{ equals: tls }} }}
  127.0.0.1:
    tls: none
    upstream: "http://127.0.0.1:{json_tools}"
    auth:
      api_keys:
        keys: {{ ci: "sha256:{ci}", other: "sha256:{other}" }}
    policy:
      default: deny
      rules:
        - name: ci-fast
          effect: allow
          who: {{ keys: [ci] }}
          tools: [fast]
"#,
        ca = ca.display(),
        ci = sha256_hex("ci-key-0123456789abcdef"),
        other = sha256_hex("other-key-0123456789abcdef"),
    )
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs tests/python/mcp_policy_check.py: the SDK's results of `steps`.
async fn steps(url: &str, transport: &str, header: &str, steps: Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mcp_policy_check.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python())
            .arg(script)
            .args([url, transport, &steps.to_string(), "--header", header])
            .output(),
    )
    .await
    .expect("the MCP client finished within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        out.status.success(),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v.as_array().unwrap().clone()
}

/// One step over Streamable HTTP.
async fn one(url: &str, header: &str, step: Value) -> Value {
    steps(url, "streamable", header, json!([step]))
        .await
        .remove(0)
}

/// An MCP session opened by hand (initialize, then initialized) as `auth`: its id.
async fn raw_session(client: &reqwest::Client, url: &str, auth: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "raw", "version": "1"}}});
    let r = raw_call(client, url, auth, "", init.to_string()).await;
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = raw_call(client, url, auth, &session, initialized.to_string()).await;
    assert_eq!(r.status(), 202);
    session
}

/// One POST of `body` as written, in `session` (none: `""`).
async fn raw_call(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    session: &str,
    body: String,
) -> reqwest::Response {
    let mut r = client
        .post(url)
        .header("authorization", auth.trim_start_matches("Authorization:"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if !session.is_empty() {
        r = r.header("mcp-session-id", session);
    }
    r.body(body).send().await.unwrap()
}

fn ok(v: &Value) -> &Value {
    assert!(v.get("ok").is_some(), "expected success, got {v}");
    &v["ok"]
}

fn not_allowed(v: &Value, what: &str) {
    assert_eq!(v["rpc"], -32003, "expected a policy refusal, got {v}");
    assert!(
        v["message"].as_str().unwrap().contains(what),
        "{v} names {what}"
    );
}

#[tokio::test]
async fn each_rule_kind_allows_its_caller_and_refuses_its_twin_before_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    std::fs::write(tmp.path().join("ca.pem"), ca.pem()).unwrap();
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let tools = ToolServer::start(tmp.path(), false).await;
    let json_tools = ToolServer::start(tmp.path(), true).await;
    let ports = Ports::new();
    let audit = tmp.path().join("audit.jsonl");
    let cfg = format!(
        "{}storage: {}\naudit: {{ file: {}, values: [query, \"delete_*\"] }}\n{}",
        ports.yaml(),
        tmp.path().join("certs").display(),
        audit.display(),
        host_yaml(
            tools.port,
            json_tools.port,
            &auth.issuer(),
            &tmp.path().join("ca.pem")
        )
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let url = format!("http://localhost:{}/mcp", ports.http);
    let iss = auth.issuer();
    let token = |extra: Value| {
        let mut c = json!({"iss": iss, "aud": AUD, "sub": "u", "iat": now(), "exp": now() + 600,
                           "scope": "mcp.tools"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        format!("Authorization:Bearer {}", mint(&auth.k1, "k1", c))
    };

    // Any authenticated caller: `fast` with a lowercase text (regex), not with another.
    let plain = token(json!({}));
    for transport in ["streamable", "sse"] {
        let u = match transport {
            "streamable" => url.clone(),
            _ => format!("http://localhost:{}/legacy/sse", ports.http),
        };
        if transport == "sse" {
            // The legacy transport gets its answers on the stream: only allowed calls here.
            let r = steps(
                &u,
                transport,
                &plain,
                json!([["call", "fast", {"text": "hello"}]]),
            )
            .await;
            assert_eq!(ok(&r[0]), "hello");
            continue;
        }
        let r = steps(
            &u,
            transport,
            &plain,
            json!([
                ["call", "fast", {"text": "hello there"}],
                ["call", "fast", {"text": "Hello; rm -rf"}],
                ["call", "fast", {}],
                ["call", "query", {"db": "analytics", "sql": "select 1"}],
                ["call", "delete_item", {"path": "/tmp/x"}],
                ["call", "slow", {"seconds": 0}],
                ["read", "docs://public/readme"],
                ["read", "docs://private/salaries"],
                ["prompt", "summary", {"topic": "tls"}],
                ["prompt", "summary", {"topic": "salaries"}],
                ["tools"],
                ["prompts"],
                ["resources"],
            ]),
        )
        .await;
        assert_eq!(ok(&r[0]), "hello there");
        not_allowed(&r[1], "fast");
        not_allowed(&r[2], "fast");
        // Not allowed at all for this caller, but a scope would allow it: the SDK surfaces the
        // 403 (its OAuth client would step up; see the raw check below).
        assert!(r[3].get("ok").is_none(), "{}", r[3]);
        not_allowed(&r[4], "delete_item");
        not_allowed(&r[5], "slow");
        assert_eq!(ok(&r[6]), "readme");
        not_allowed(&r[7], "docs://private/salaries");
        assert!(ok(&r[8]).as_str().unwrap().contains("Summarise tls"));
        not_allowed(&r[9], "summary");
        // Lists hold what this caller may call: `fast` (with some arguments), the prompt, the
        // public document; nothing of `query`, `delete_item`, `slow`, `fail` or the salaries.
        assert_eq!(ok(&r[10]), &json!(["fast"]));
        assert_eq!(ok(&r[11]), &json!(["summary"]));
        assert_eq!(ok(&r[12]), &json!(["docs://public/readme"]));
    }

    // A scope: `query`, on the databases of the rule only.
    let analyst = token(json!({"scope": "mcp.tools db.query"}));
    let r = steps(
        &url,
        "streamable",
        &analyst,
        json!([
            ["call", "query", {"db": "analytics", "sql": "select 1"}],
            ["call", "query", {"db": "production", "sql": "drop table users"}],
            ["call", "query", {"db": ["analytics"], "sql": "x"}],
            ["tools"],
            // The caller's own token as an argument: recorded masked.
            ["call", "query", {"db": "reporting", "sql": analyst.trim_start_matches("Authorization:Bearer ")}],
        ]),
    )
    .await;
    assert_eq!(ok(&r[3]), &json!(["fast", "query"]));
    assert_eq!(ok(&r[0]), "analytics: select 1");
    not_allowed(&r[1], "query");
    // An argument that only looks like an allowed one (a list) is not one.
    assert!(r[2].get("ok").is_none(), "{}", r[2]);

    // A claim value: deletes under /tmp/ only; the same caller in `readers` is refused by the
    // earlier deny rule (first match wins).
    let ops = token(json!({"dept": "ops"}));
    let r = steps(
        &url,
        "streamable",
        &ops,
        json!([
            ["call", "delete_item", {"path": "/tmp/a"}],
            ["call", "delete_item", {"path": "/etc/passwd"}],
            ["call", "delete_item", {"path": "/tmp/../etc/passwd"}],
            // serde_json's private raw-value key: its own `Value` reader takes the text inside
            // for the object; the server sees one odd key (a default path, or none).
            ["call", "delete_item", {"$serde_json::private::RawValue": "{\"path\":\"/tmp/d\"}"}],
            ["call", "delete_item", {"path": {"$serde_json::private::RawValue": "\"/tmp/e\""}}],
            // Another spelling of `path`, which Go's and .NET's readers bind as `path`.
            ["call", "delete_item", {"path": "/tmp/f", "PATH": "/etc/passwd"}],
            // A deny rule on `force: true` holds of what the server coerces into `true`.
            ["call", "delete_item", {"path": "/tmp/h", "force": true}],
            ["call", "delete_item", {"path": "/tmp/i", "force": "yes"}],
            ["call", "delete_item", {"path": "/tmp/j", "force": 1}],
            ["call", "delete_item", {"path": "/tmp/k", "force": "OFF"}],
            ["call", "delete_item", {"path": "/tmp/../..//etc/./shadow"}],
            ["call", "delete_item", {"path": "/tmp/../var/x"}],
        ]),
    )
    .await;
    assert_eq!(ok(&r[0]), "deleted /tmp/a");
    not_allowed(&r[1], "delete_item");
    // A deny rule's prefix holds of the path a tool would open: `/etc/passwd`.
    not_allowed(&r[2], "delete_item");
    not_allowed(&r[3], "delete_item");
    not_allowed(&r[4], "delete_item");
    not_allowed(&r[5], "delete_item");
    for refused in &r[6..9] {
        not_allowed(refused, "delete_item");
    }
    assert_eq!(ok(&r[9]), "deleted /tmp/k");
    not_allowed(&r[10], "delete_item");
    // An allow rule's prefix is a prefix of the string: tools must still confine their paths.
    assert_eq!(ok(&r[11]), "deleted /tmp/../var/x");
    let r = one(&url, &ops, json!(["tools"])).await;
    assert_eq!(ok(&r), &json!(["fast", "delete_item"]));
    let reader = token(json!({"dept": "ops", "groups": ["readers"]}));
    // A deny rule without argument conditions hides what it refuses.
    let r = one(&url, &reader, json!(["tools"])).await;
    assert_eq!(ok(&r), &json!(["fast"]));
    let r = one(
        &url,
        &reader,
        json!(["call", "delete_item", {"path": "/tmp/b"}]),
    )
    .await;
    not_allowed(&r, "delete_item");
    let other_dept = token(json!({"dept": "sales"}));
    let r = one(
        &url,
        &other_dept,
        json!(["call", "delete_item", {"path": "/tmp/c"}]),
    )
    .await;
    not_allowed(&r, "delete_item");

    // An API key's name: `ci` may call `fast`, `other` may not (JSON answers, lists included).
    let keys_url = format!("http://127.0.0.1:{}/mcp", ports.http);
    let r = steps(
        &keys_url,
        "streamable",
        "Authorization:Bearer ci-key-0123456789abcdef",
        json!([["call", "fast", {"text": "hi"}], ["tools"]]),
    )
    .await;
    assert_eq!(ok(&r[0]), "hi");
    assert_eq!(ok(&r[1]), &json!(["fast"]));
    let r = one(
        &keys_url,
        "Authorization:Bearer other-key-0123456789abcdef",
        json!(["tools"]),
    )
    .await;
    assert_eq!(ok(&r), &json!([]));
    let r = one(
        &keys_url,
        "Authorization:Bearer other-key-0123456789abcdef",
        json!(["call", "fast", {"text": "hi"}]),
    )
    .await;
    not_allowed(&r, "fast");

    // Hot reload: the rule now names `other`; the same two keys swap outcomes, no restart.
    let swapped = std::fs::read_to_string(&edge.config_path)
        .unwrap()
        .replace("who: { keys: [ci] }", "who: { keys: [other] }");
    std::fs::write(&edge.config_path, swapped).unwrap();
    edge.sighup();
    let c = reqwest::Client::new();
    let fast = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "fast", "arguments": {"text": "x"}}});
    wait_for(Duration::from_secs(10), "the reloaded policy", || async {
        let r = c
            .post(&keys_url)
            .bearer_auth("ci-key-0123456789abcdef")
            .header("accept", "application/json, text/event-stream")
            .json(&fast)
            .send()
            .await
            .ok()?;
        (r.status() == 403).then_some(())
    })
    .await;
    let r = one(
        &keys_url,
        "Authorization:Bearer other-key-0123456789abcdef",
        json!(["call", "fast", {"text": "hi"}]),
    )
    .await;
    assert_eq!(ok(&r), "hi");

    // Raw: a missing scope is 403 insufficient_scope naming every scope the call needs.
    let client = reqwest::Client::new();
    let call = |name: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": name, "arguments": args}})
    };
    let post = |body: Value, auth: &str| {
        client
            .post(&url)
            .header("authorization", auth.trim_start_matches("Authorization:"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let r = post(
        call("query", json!({"db": "analytics", "sql": "1"})),
        &plain,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", edge.log()));
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp.tools db.query\"")
            && challenge.contains("resource_metadata="),
        "{challenge}"
    );
    // No scope would allow this one: a JSON-RPC error with the call's id, never the server.
    let r = post(call("delete_item", json!({"path": "/srv/x"})), &plain)
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("www-authenticate").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32003);
    // Bodies a server reads but serde_json does not (NaN, UTF-16), compressed or in another
    // charset: never forwarded unread.
    let raw_post = |body: Vec<u8>, extra: &'static [(&'static str, &'static str)]| {
        let mut r = client
            .post(&url)
            .header("authorization", plain.trim_start_matches("Authorization:"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.body(body).send()
    };
    let nan = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_item","arguments":{"path":"/srv/nan"}},"x":NaN}"#;
    let r = raw_post(nan.to_vec(), &[]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("-32700"));
    let utf16: Vec<u8> = String::from_utf8_lossy(&nan[..nan.len() - 9])
        .replace("/srv/nan", "/srv/utf16")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(raw_post(utf16, &[]).await.unwrap().status(), 400);
    let gz = raw_post(b"\x1f\x8b".to_vec(), &[("content-encoding", "gzip")]);
    assert_eq!(gz.await.unwrap().status(), 415);
    let charset = call("delete_item", json!({"path": "/srv/charset"})).to_string();
    let r = raw_post(
        charset.into_bytes(),
        &[("content-type", "application/json; charset=utf-16")],
    );
    assert_eq!(r.await.unwrap().status(), 415);
    // A resource URI that a URL parser reads as another one is decided as both.
    let escape = json!({"jsonrpc": "2.0", "id": 9, "method": "resources/read",
                        "params": {"uri": "file:///public/../secret"}});
    let r = raw_post(escape.to_string().into_bytes(), &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A read key spelled in another case (`Name` beside `name`: Go's reader runs the last one
    // written) or written twice (`"method": null` after the call: Go keeps the call) is no
    // body the edge can read: refused, where the call written once is run.
    let session = raw_session(&client, &url, &plain).await;
    let twin = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                      "params": {"name": "fast", "arguments": {"text": "ok"}}})
    .to_string();
    let r = raw_call(&client, &url, &plain, &session, twin.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(r#""text":"ok""#));
    let variant = twin.replacen(
        r#""name":"fast""#,
        r#""name":"fast","Name":"delete_item""#,
        1,
    );
    // After the call, as reported (`json!` orders keys: appended by hand).
    let twice = format!(r#"{},"method":null}}"#, &twin[..twin.len() - 1]);
    for body in [variant, twice] {
        assert!(body.contains("Name") || body.contains("null"), "{body}");
        let r = raw_call(&client, &url, &plain, &session, body).await;
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("-32700"));
    }
    // An argument written twice: the value the server runs with cannot be told, so the rule
    // allowing deletes under /tmp/ does not (Python keeps the last, Go the first before a null).
    let session = raw_session(&client, &url, &ops).await;
    let delete = |path: &str| {
        json!({"jsonrpc": "2.0", "id": 12, "method": "tools/call",
               "params": {"name": "delete_item", "arguments": {"path": path}}})
        .to_string()
    };
    let r = raw_call(&client, &url, &ops, &session, delete("/tmp/g")).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("deleted /tmp/g"));
    let twice = delete("/tmp/g").replacen(r#""path":"#, r#""path":"/etc/passwd","path":"#, 1);
    assert!(twice.contains("/etc/passwd"), "{twice}");
    let r = raw_call(&client, &url, &ops, &session, twice).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("-32003"));
    // A batch with one refused call is refused whole, sent in pieces or at once.
    let batch = json!([
        call("fast", json!({"text": "ok"})),
        call("delete_item", json!({"path": "/srv/batch"}))
    ]);
    let r = post(batch, &ops).await.unwrap();
    assert_eq!(r.status(), 403);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ports.http))
        .await
        .unwrap();
    let body = call("delete_item", json!({"path": "/srv/chunked"})).to_string();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: localhost\r\n{}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        plain.replacen(':', ": ", 1)
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(head.as_bytes()).await.unwrap();
    for piece in body.as_bytes().chunks(9) {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        s.flush().await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    // The audit log: one record per call, with the decision, the rule and the outcome; never
    // a credential, in the audit file or the edge's log. Records are written in batches: the
    // last call's is there when all are.
    let written = wait_for(
        Duration::from_secs(10),
        "the last call's record",
        || async {
            let text = std::fs::read_to_string(&audit).ok()?;
            text.contains("/srv/chunked").then_some(text)
        },
    )
    .await;
    let records: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let find = |pred: &dyn Fn(&Value) -> bool| -> Value {
        records
            .iter()
            .find(|r| pred(r))
            .cloned()
            .unwrap_or_else(|| panic!("no such record among {records:#?}"))
    };
    let q = find(&|r| {
        r["name"] == "query" && r["values"]["db"] == "analytics" && r["decision"] == "allow"
    });
    assert_eq!(q["decision"], "allow");
    assert_eq!(q["rule"], "analysts-query");
    assert_eq!(q["outcome"], "ok");
    assert_eq!(q["status"], 200);
    assert_eq!(q["caller"]["subject"], "u");
    assert_eq!(q["caller"]["via"], "jwt");
    assert_eq!(q["arguments"], json!(["db", "sql"]));
    assert_eq!(q["values"]["sql"], "select 1");
    assert!(q["replica"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(q["request_id"].as_str().unwrap().len() == 16 && q["time"].is_string());
    // The same call by a caller without the scope: refused, by the default.
    let refused = find(&|r| r["name"] == "query" && r["decision"] == "deny");
    assert_eq!(
        (&refused["rule"], &refused["status"]),
        (&json!("default"), &json!(403))
    );
    let masked = find(&|r| r["name"] == "query" && r["values"]["db"] == "reporting");
    assert_eq!(masked["values"]["sql"], "***");
    let d = find(&|r| r["name"] == "delete_item" && r["values"]["path"] == "/etc/passwd");
    assert_eq!(
        (&d["decision"], &d["rule"], &d["outcome"]),
        (&json!("deny"), &json!("never-etc"), &json!("refused"))
    );
    // A key written twice, or in two spellings: said, as `values` holds one of the values.
    for path in ["/tmp/g", "/tmp/f"] {
        let twice = find(&|r| {
            r["name"] == "delete_item" && r["values"]["path"] == path && r["decision"] == "deny"
        });
        assert_eq!(twice["repeated_argument"], true, "{twice}");
    }
    assert!(q.get("repeated_argument").is_none(), "{q}");
    let forced = find(&|r| r["values"]["path"] == "/tmp/i");
    assert_eq!(
        (&forced["rule"], &forced["values"]["force"]),
        (&json!("no-forced-deletes"), &json!("yes"))
    );
    let f = find(&|r| r["name"] == "fast" && r["caller"]["key"] == "ci");
    assert_eq!(f["caller"]["via"], "api_key");
    assert!(
        f.get("values").is_none(),
        "values only for the tools listed: {f}"
    );
    assert_eq!(f["arguments"], json!(["text"]));
    let everything = format!(
        "{}\n{}",
        std::fs::read_to_string(&audit).unwrap(),
        edge.log()
    );
    for secret in [&plain, &analyst, &ops, &reader, &other_dept] {
        let token = secret.trim_start_matches("Authorization:Bearer ");
        assert!(!everything.contains(token), "a token reached a log");
    }
    for key in ["ci-key-0123456789abcdef", "other-key-0123456789abcdef"] {
        assert!(!everything.contains(key), "an API key reached a log");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&audit).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // What reached the server: the allowed calls, none of the refused ones.
    let log =
        std::fs::read_to_string(tmp.path().join(format!("tools-{}.log", tools.port))).unwrap();
    assert!(
        log.contains("CALLED delete_item path='/tmp/a' force=False"),
        "{log}"
    );
    assert!(
        log.contains("CALLED delete_item path='/tmp/k' force=False"),
        "{log}"
    );
    assert!(log.contains("CALLED query db='analytics'"), "{log}");
    for refused in [
        "path='/etc/passwd'",
        "/tmp/b'",
        "/tmp/c'",
        "/srv/",
        "production",
        "'/tmp/x'",
        "force=True",
        "etc/passwd'",
        "shadow",
    ] {
        assert!(
            !log.contains(refused),
            "{refused} reached the server:\n{log}"
        );
    }
    assert!(
        edge.metric("mcp_edge_requests_refused_total{host=\"localhost\",reason=\"policy\"}")
            .await
            >= 10.0
    );
}

#[tokio::test]
async fn check_refuses_rules_that_never_match_or_are_shadowed() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    std::fs::write(tmp.path().join("ca.pem"), ca.pem()).unwrap();
    let base = host_yaml(1, 2, "https://127.0.0.1:1", &tmp.path().join("ca.pem"));
    let check = |yaml: String| {
        let p = tmp.path().join("edge.yaml");
        std::fs::write(&p, yaml).unwrap();
        outcome(
            std::process::Command::new(edge_bin())
                .args(["check", "--config"])
                .arg(&p),
        )
    };
    let (ok, out) = check(base.clone());
    assert!(ok, "{out}");
    let cases = [
        // A later rule inside an earlier one's reach.
        (
            "        - name: fast-lowercase\n",
            "        - name: shadowing\n          effect: allow\n          tools: [\"*\"]\n        - name: fast-lowercase\n",
            "never reached",
        ),
        // An API key that is not the route's.
        ("who: { keys: [ci] }", "who: { keys: [cj] }", "no API key named \"cj\""),
        // Arguments on resources, which carry none.
        (
            "resources: [\"docs://public/*\", \"file:///public/*\"]",
            "resources: [\"docs://public/*\", \"file:///public/*\"]\n          arguments: { a: { equals: b } }",
            "only tools/call and prompts/get carry arguments",
        ),
        // Methods that exclude the tools named.
        (
            "tools: [fast]\n          arguments",
            "tools: [fast]\n          methods: [prompts/get]\n          arguments",
            "never matches",
        ),
        ("regex: \"^[a-z ]+$\"", "regex: \"([a-z\"", "not a regular expression"),
        ("default: deny", "default: maybe", "expected allow or deny"),
        ("one_of: [analytics, reporting]", "one_of: []", "the list is empty"),
        // Past 2^53 a float equals nothing.
        (
            "one_of: [analytics, reporting]",
            "one_of: [analytics, 1.2345678901234567e16]",
            "equals no argument",
        ),
        ("one_of: [analytics, reporting]", "one_of: [.nan]", "equals no argument"),
    ];
    for (from, to, says) in cases {
        assert!(base.contains(from), "{from}");
        let (ok, out) = check(base.replacen(from, to, 1));
        assert!(!ok && out.contains(says), "{to}: {out}");
        assert!(out.contains("policy"), "names the key: {out}");
    }
    // A deny rule's `equals` holds of coerced spellings too (`"yes"` for `true`): an earlier
    // allow rule on the same value decides only some of its calls, an earlier deny rule all.
    let earlier = |effect: &str| {
        let rule = format!(
            "        - name: earlier\n          effect: {effect}\n          tools: [\"delete_*\"]\n          arguments: {{ force: {{ equals: true }} }}\n"
        );
        let at = "        - name: no-forced-deletes\n";
        assert!(base.contains(at));
        base.replacen(at, &format!("{rule}{at}"), 1)
    };
    let (ok, out) = check(earlier("allow"));
    assert!(ok, "{out}");
    let (ok, out) = check(earlier("deny"));
    assert!(!ok && out.contains("never reached"), "{out}");
    // Said explicitly: a policy without `default` is refused.
    let (ok, out) = check(base.replacen("      default: deny\n", "", 1));
    assert!(!ok && out.contains("default"), "{out}");
}
