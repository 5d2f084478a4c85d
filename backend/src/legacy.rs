//! The 2024-11-05 HTTP+SSE transport, which rmcp 3 no longer ships: `GET /sse` opens a stream
//! whose first event names the POST endpoint (`event: endpoint`, `/message?sessionId=…`);
//! `POST /message?sessionId=…` is answered 202 and the JSON-RPC response goes out on the stream.
//!
//! Each stream is one rmcp session over a pair of channels (rmcp's sink/stream transport). The
//! session ends, and its entry is removed, when the client goes away or the server shuts down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::ServiceExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::server::DocsServer;

/// Sessions by id: where their POSTed messages go.
#[derive(Clone)]
pub struct Legacy {
    server: DocsServer,
    sessions: Arc<Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>,
    keep_alive: Duration,
    shutdown: CancellationToken,
}

impl Legacy {
    pub fn new(server: DocsServer, keep_alive: Duration, shutdown: CancellationToken) -> Self {
        Self {
            server,
            sessions: Default::default(),
            keep_alive,
            shutdown,
        }
    }

    /// Open sessions (for tests and health).
    pub fn open_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Removes the session when its stream is dropped (the client went away).
struct Registered {
    id: String,
    sessions: Arc<Mutex<HashMap<String, mpsc::Sender<ClientJsonRpcMessage>>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        tracing::debug!(session = %self.id, "legacy SSE session closed");
    }
}

pub async fn sse(State(l): State<Legacy>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (to_server, from_client) = mpsc::channel::<ClientJsonRpcMessage>(64);
    let (to_client, from_server) = mpsc::channel::<ServerJsonRpcMessage>(64);
    l.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), to_server);
    let server = l.server.clone();
    let session = id.clone();
    tokio::spawn(async move {
        match server.serve((to_client, from_client)).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => {
                tracing::debug!(session = %session, error = %e, "legacy session ended before initialize")
            }
        }
    });
    let guard = Registered {
        id: id.clone(),
        sessions: l.sessions.clone(),
    };
    let endpoint = futures::stream::once(async move {
        Ok(Event::default()
            .event("endpoint")
            .data(format!("/message?sessionId={id}")))
    });
    let messages = from_server.map(move |m| {
        let _ = &guard;
        let json = serde_json::to_string(&m).unwrap_or_else(|_| "{}".into());
        Ok(Event::default().event("message").data(json))
    });
    let shutdown = l.shutdown.clone();
    let stream = endpoint
        .chain(messages)
        .take_until(async move { shutdown.cancelled().await });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(l.keep_alive).text("ping"))
}

#[derive(Deserialize)]
pub struct SessionQuery {
    #[serde(rename = "sessionId", alias = "session_id")]
    session_id: Option<String>,
}

pub async fn message(
    State(l): State<Legacy>,
    Query(q): Query<SessionQuery>,
    body: Bytes,
) -> Response {
    let Some(id) = q.session_id else {
        return (StatusCode::BAD_REQUEST, "missing sessionId").into_response();
    };
    let sender = l
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let Some(mut sender) = sender else {
        return (StatusCode::NOT_FOUND, "unknown or closed session").into_response();
    };
    let msg: ClientJsonRpcMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a JSON-RPC message: {e}"),
            )
                .into_response()
        }
    };
    match sender.send(msg).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "session closed").into_response(),
    }
}
