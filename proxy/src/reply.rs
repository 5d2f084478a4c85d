//! Answers the edge gives itself (refusals, redirects, discovery documents), never cached.

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Answers `status` with `body` of `content_type` and `extra` headers; `Ok(true)`: answered.
pub async fn respond(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(HeaderName, String)],
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (k, v) in extra {
        resp.insert_header(k.clone(), v.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

pub async fn respond_text(session: &mut Session, status: u16, body: &'static str) -> Result<bool> {
    respond(
        session,
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
        &[],
    )
    .await
}
