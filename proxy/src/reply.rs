//! Answers the edge gives itself (refusals, challenges, redirects, discovery documents), as data:
//! components decide an [`Answer`], the request path writes it with [`write`]. Never cached.

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::ResponseHeader;
use pingora::protocols::http::{HttpTask, ServerSession as Session};
use pingora::Result;

/// One answer the edge makes itself.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, String)>,
    /// Counted in `mcp_edge_requests_refused_total` under this reason.
    pub refused: Option<&'static str>,
}

impl Answer {
    /// `status` with a short plain-text body.
    pub fn text(status: u16, body: &'static str) -> Self {
        Self::new(
            status,
            "text/plain; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        )
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Self {
        Self::new(status, "application/json", body.into())
    }

    pub fn new(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Self {
            status,
            content_type,
            body,
            headers: Vec::new(),
            refused: None,
        }
    }

    /// Counted as a refusal for `reason`.
    pub fn refused(mut self, reason: &'static str) -> Self {
        self.refused = Some(reason);
        self
    }

    pub fn with_headers(mut self, headers: Vec<(HeaderName, String)>) -> Self {
        self.headers.extend(headers);
        self
    }
}

/// Writes `answer` (headers only for HEAD); `Ok(true)`: answered.
pub async fn write(session: &mut Session, answer: &Answer) -> Result<bool> {
    let mut resp = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))?;
    resp.insert_header(header::CONTENT_TYPE, answer.content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    for (k, v) in &answer.headers {
        // Appended: a challenge may be given in two schemes (Bearer and DPoP).
        resp.append_header(k.clone(), v.as_str())?;
    }
    if session.req_header().method == http::Method::HEAD {
        header_only(session, Box::new(resp)).await?;
        return Ok(true);
    }
    session.write_response_header(Box::new(resp)).await?;
    session
        .write_response_body(answer.body.clone(), true)
        .await?;
    Ok(true)
}

/// Writes a response that is its header alone and ends it there (HTTP/1: the body finished;
/// HTTP/2: END_STREAM on the HEADERS frame, not an empty DATA frame after it).
pub async fn header_only(session: &mut Session, resp: Box<ResponseHeader>) -> Result<()> {
    let task = vec![HttpTask::Header(resp, true)];
    session.response_duplex_vec(task).await.map(|_| ())
}
