//! The HTTP listener (port 80): ACME HTTP-01 challenges for anyone, plain proxying for
//! `tls: none` hosts, a redirect to https for TLS hosts, 404 for anything else (never a redirect
//! to an unknown host).

use bytes::Bytes;
use http::header;
use pingora::protocols::http::ServerSession as Session;
use pingora::Result;

use super::ctx::Ctx;
use super::{request_host, EdgeProxy};
use crate::config::TlsSource;
use crate::http01::CHALLENGE_PREFIX;
use crate::live::Snapshot;
use crate::reply::Answer;

/// `Ok(None)`: a `tls: none` host, proxied; `Ok(Some(answer))` otherwise.
pub(super) async fn answer(
    proxy: &EdgeProxy,
    session: &Session,
    ctx: &Ctx,
    snap: &Snapshot,
) -> Result<Option<Answer>> {
    let path = session.req_header().uri.path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        // A look-up in storage: on Redis, bounded by its command timeout (the only wait on
        // storage in the request path).
        return Ok(Some(match proxy.challenges.lookup(token).await {
            Some(key_auth) => Answer::new(200, "application/octet-stream", Bytes::from(key_auth)),
            None => Answer::text(404, "unknown challenge\n"),
        }));
    }
    let Some(entry) = super::request::entry_of(ctx) else {
        return Ok(Some(Answer::text(404, "unknown host\n")));
    };
    if entry.host.tls == TlsSource::None {
        return Ok(None);
    }
    // `entry` was found by this exact name, so it is one of the configured names: the
    // redirect can only ever point at a host this proxy serves.
    let host = request_host(session).unwrap_or_else(|| entry.host.name.to_string());
    let port = snap.config.listen.redirect_https_port;
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let pq = session
        .req_header()
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{pq}");
    Ok(Some(
        Answer::new(
            308,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use https\n"),
        )
        .with_headers(vec![(header::LOCATION, location)]),
    ))
}
