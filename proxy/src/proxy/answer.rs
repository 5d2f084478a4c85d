//! The one place the edge writes an answer of its own: refusals, challenges, redirects, 401/403/
//! 429, 421, 431, -32020, and the 502/504 of a failed upstream. Every phase returns a decision;
//! this turns it into bytes on the wire and counts what was refused.

use pingora::protocols::http::ServerSession as Session;
use pingora::Result;

use super::ctx::Ctx;
use crate::reply::{self, Answer};

/// Writes `answer`, counting it as refused when it says so; `Ok(true)`: the request is answered.
pub(super) async fn send(session: &mut Session, ctx: &Ctx, answer: Answer) -> Result<bool> {
    if let Some(reason) = answer.refused {
        ctx.count_refused(reason);
    }
    reply::write(session, &answer).await
}

/// The answer to a request the upstream could not serve (`code` 0: the client is gone, nothing
/// to write). pingora's own error response: an empty body with the status.
pub(super) async fn send_error(session: &mut Session, code: u16) {
    if code > 0 && !answered(session) {
        let _ = session.respond_error(code).await;
    }
}

/// Whether the client has the final response's header already (a forwarded `100 Continue` is
/// not an answer: the edge's own may still follow it).
pub(super) fn answered(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
}
