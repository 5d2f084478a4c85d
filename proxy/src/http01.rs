//! ACME HTTP-01 challenge responses, answered on the HTTP listener. The ACME manager fills the
//! store while an authorization is pending and empties it afterwards.

use std::collections::HashMap;
use std::sync::RwLock;

pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Token → key authorization. Its `Debug` shows how many, never what (they are secrets).
#[derive(Default)]
pub struct ChallengeStore {
    map: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for ChallengeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.read().map_or(0, |m| m.len());
        f.debug_struct("ChallengeStore")
            .field("pending", &n)
            .finish()
    }
}

impl ChallengeStore {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    pub fn get(&self, token: &str) -> Option<String> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }
}
