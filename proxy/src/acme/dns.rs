//! DNS-01 (RFC 8555 §8.4): a TXT record `_acme-challenge.NAME` holding the base64url SHA-256
//! of the key authorization, written through the configured provider (an RFC 2136 update
//! signed with TSIG, or the operator's command), looked up at a nameserver until visible (at
//! most `propagation_timeout`), and removed again after the validation, whatever its outcome.
//! A wildcard `*.example.com` is proved at `_acme-challenge.example.com`; several values may
//! stand there at once (the name and its wildcard), so records are added and removed one value
//! at a time, never replaced.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType, TSigner};
use instant_acme::ChallengeType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::Failure;
use super::solver::Solver;
use crate::config::{DnsConfig, DnsProvider};

/// One exchange with a DNS server, or one run of the exec command.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// The name that proves `identifier`: `_acme-challenge.` before it, without a wildcard's `*.`.
pub(super) fn record_name(identifier: &str) -> String {
    format!(
        "_acme-challenge.{}",
        identifier.strip_prefix("*.").unwrap_or(identifier)
    )
}

/// The TXT value for a key authorization: base64url(SHA-256(key authorization)), no padding.
pub(super) fn record_value(key_authorization: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::pem::sha256(key_authorization.as_bytes()))
}

/// DNS-01 through `acme.dns`.
pub(super) struct Dns01 {
    pub config: Arc<DnsConfig>,
    /// (record name, value) presented during this order, for the cleanup.
    pub presented: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl Solver for Dns01 {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Dns01
    }

    fn name(&self) -> &'static str {
        "dns-01"
    }

    fn can_validate(&self, name: &str) -> bool {
        name.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_err()
    }

    async fn present(
        &self,
        name: &str,
        _token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure> {
        let (fqdn, value) = (record_name(name), record_value(key_authorization));
        self.presented
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((fqdn.clone(), value.clone()));
        change(&self.config, Change::Add, &fqdn, &value)
            .await
            .map_err(|e| Failure::new(format!("dns-01: cannot add the TXT record {fqdn}: {e}")))?;
        let Some(ns) = self.config.nameserver else {
            return Ok(());
        };
        wait_visible(ns, &fqdn, &value, self.config.propagation_timeout)
            .await
            .map_err(|e| Failure::new(format!("dns-01: {e}")))
    }

    fn cleanup(&self, _name: &str, _token: &str) {
        let records =
            std::mem::take(&mut *self.presented.lock().unwrap_or_else(|e| e.into_inner()));
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let config = self.config.clone();
        rt.spawn(async move {
            for (fqdn, value) in records {
                if let Err(e) = change(&config, Change::Remove, &fqdn, &value).await {
                    tracing::warn!(record = %fqdn, error = %e, "dns-01: cannot remove the TXT record; remove it by hand");
                }
            }
        });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Add,
    Remove,
}

async fn change(config: &DnsConfig, what: Change, fqdn: &str, value: &str) -> Result<(), String> {
    match &config.provider {
        DnsProvider::Rfc2136 {
            server,
            zone,
            key_name,
            key,
            algorithm,
        } => {
            let update = Update {
                zone,
                key_name,
                key: &key.0,
                algorithm,
                ttl: config.ttl,
            };
            rfc2136(*server, &update, what, fqdn, value).await
        }
        DnsProvider::Exec { command } => exec(command, what, fqdn, value).await,
    }
}

/// The parts of an RFC 2136 update that do not change between records.
struct Update<'a> {
    zone: &'a str,
    key_name: &'a str,
    key: &'a [u8],
    algorithm: &'a str,
    ttl: u32,
}

fn tsig_algorithm(name: &str) -> TsigAlgorithm {
    match name {
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => TsigAlgorithm::HmacSha256,
    }
}

/// The signed UPDATE message adding or removing one TXT value.
fn update_message(
    u: &Update<'_>,
    what: Change,
    fqdn: &str,
    value: &str,
) -> Result<Message, String> {
    let zone = Name::from_ascii(format!("{}.", u.zone)).map_err(|e| e.to_string())?;
    let name = Name::from_ascii(format!("{fqdn}.")).map_err(|e| e.to_string())?;
    if !zone.zone_of(&name) {
        return Err(format!("{fqdn} is not in the zone {}", u.zone));
    }
    let ttl = if what == Change::Add { u.ttl } else { 0 };
    let mut rrset = RecordSet::with_ttl(name.clone(), RecordType::TXT, ttl);
    rrset.set_records(vec![Record::from_rdata(
        name,
        ttl,
        RData::TXT(TXT::new(vec![value.to_string()])),
    )]);
    let mut msg = match what {
        Change::Add => update_message::append(rrset, zone, false, false),
        Change::Remove => update_message::delete_by_rdata(rrset, zone, false),
    };
    let signer_name = Name::from_ascii(format!("{}.", u.key_name.trim_end_matches('.')))
        .map_err(|e| e.to_string())?;
    let signer = TSigner::new(
        u.key.to_vec(),
        tsig_algorithm(u.algorithm),
        signer_name,
        300,
    )
    .map_err(|e| e.to_string())?;
    let now = crate::time::unix_now().max(0) as u64;
    msg.finalize(&signer, now).map_err(|e| e.to_string())?;
    Ok(msg)
}

/// Sends one UPDATE over TCP and checks the server's answer.
async fn rfc2136(
    server: SocketAddr,
    u: &Update<'_>,
    what: Change,
    fqdn: &str,
    value: &str,
) -> Result<(), String> {
    let msg = update_message(u, what, fqdn, value)?;
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange_tcp(server, &msg))
        .await
        .map_err(|_| {
            format!(
                "{server} did not answer within {}s",
                EXCHANGE_TIMEOUT.as_secs()
            )
        })??;
    match answer.metadata.response_code {
        ResponseCode::NoError => Ok(()),
        // Removing what is not there is what was wanted.
        ResponseCode::NXRRSet if what == Change::Remove => Ok(()),
        code => Err(format!("{server} refused the update: {code}")),
    }
}

async fn exchange_tcp(server: SocketAddr, msg: &Message) -> Result<Message, String> {
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| "message too large".to_string())?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let n = s.read_u16().await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Message::from_vec(&buf).map_err(|e| e.to_string())
}

/// Runs `COMMAND present|cleanup FQDN VALUE` (as lego's exec provider does): exit 0 once the
/// record is in place (or gone). Its output is logged, truncated, never echoed to clients.
async fn exec(command: &[String], what: Change, fqdn: &str, value: &str) -> Result<(), String> {
    let verb = if what == Change::Add {
        "present"
    } else {
        "cleanup"
    };
    let run = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .args([verb, &format!("{fqdn}."), value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(EXEC_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!(
                "{} {verb} did not finish within {}s",
                command[0],
                EXEC_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run {}: {e}", command[0]))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last: String = stderr
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    Err(format!(
        "{} {verb} exited with {}: {last}",
        command[0], out.status
    ))
}

/// Asks `ns` for the TXT records of `fqdn` until one holds `value`, at most `limit`.
async fn wait_visible(
    ns: SocketAddr,
    fqdn: &str,
    value: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match tokio::time::timeout(EXCHANGE_TIMEOUT, txt_values(ns, fqdn)).await {
            Ok(Ok(values)) if values.iter().any(|v| v == value) => return Ok(()),
            Ok(Ok(values)) => format!("{} other value(s)", values.len()),
            Ok(Err(e)) => e,
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "the TXT record {fqdn} was not visible at {ns} within {} ({last})",
                humantime::format_duration(limit)
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The TXT values of `fqdn` at `ns` (over TCP: no truncation, no spoofed UDP answers).
async fn txt_values(ns: SocketAddr, fqdn: &str) -> Result<Vec<String>, String> {
    let name = Name::from_ascii(format!("{fqdn}.")).map_err(|e| e.to_string())?;
    let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(name, RecordType::TXT));
    let answer = exchange_tcp(ns, &msg).await?;
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_and_values_follow_rfc_8555() {
        assert_eq!(
            record_name("a.example.com"),
            "_acme-challenge.a.example.com"
        );
        assert_eq!(record_name("*.example.com"), "_acme-challenge.example.com");
        // base64url(SHA-256), no padding (computed apart: Python's hashlib).
        assert_eq!(
            record_value("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"),
            "NGwKoXBgCT8JhEa0bK7AwfSqHyu_ZWeugV07fLGIVq0"
        );
    }

    #[test]
    fn an_update_outside_its_zone_is_refused_before_anything_is_sent() {
        let u = Update {
            zone: "example.com",
            key_name: "k",
            key: b"secret",
            algorithm: "hmac-sha256",
            ttl: 60,
        };
        assert!(update_message(&u, Change::Add, "_acme-challenge.other.org", "v").is_err());
        let m = update_message(&u, Change::Add, "_acme-challenge.a.example.com", "v").unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert!(m.signature.is_some(), "signed with TSIG");
    }
}
