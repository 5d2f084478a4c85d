//! ACME HTTP-01 challenge responses, answered on the HTTP listener. The ACME manager publishes a
//! response while an authorization is pending and withdraws it afterwards: in memory and in
//! storage, so that with shared storage any replica answers the CA's validation request.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::storage::{Key, Storage, StorageError};

pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Storage look-ups for tokens this replica did not publish, at once; more are answered 404 at
/// once, so strangers guessing tokens cannot queue work on the store.
const MAX_LOOKUPS: usize = 16;
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Token → key authorization. Its `Debug` shows how many, never what (they are secrets).
pub struct ChallengeStore {
    map: RwLock<HashMap<String, String>>,
    storage: Storage,
    lookups: Semaphore,
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
    pub fn new(storage: Storage) -> Self {
        Self {
            map: RwLock::default(),
            storage,
            lookups: Semaphore::new(MAX_LOOKUPS),
        }
    }

    /// Makes the response answerable here and, once this returns, by every replica sharing the
    /// storage: call it before telling the CA the challenge is ready.
    pub async fn publish(&self, token: &str, key_authorization: &str) -> Result<(), StorageError> {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
        if let Some(key) = Key::challenge(token) {
            self.storage
                .put(&[(&key, key_authorization.as_bytes())])
                .await?;
        }
        Ok(())
    }

    /// Withdraws a response (from storage in the background; it expires there anyway).
    pub fn withdraw(&self, token: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
        if let (Some(key), Ok(rt)) = (Key::challenge(token), tokio::runtime::Handle::try_current())
        {
            let storage = self.storage.clone();
            rt.spawn(async move {
                if let Err(e) = storage.delete(&key).await {
                    tracing::debug!(error = %e, "cannot delete a challenge response; it expires");
                }
            });
        }
    }

    /// The response for `token`: published here, or by another replica into shared storage.
    pub async fn lookup(&self, token: &str) -> Option<String> {
        if let Some(v) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            return Some(v.clone());
        }
        let key = Key::challenge(token)?;
        let _permit = self.lookups.try_acquire().ok()?;
        let read = tokio::time::timeout(LOOKUP_TIMEOUT, self.storage.get(&key)).await;
        match read {
            Ok(Ok(Some(v))) => String::from_utf8(v).ok(),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                // Strangers can ask at will: not a warning each time (storage_available says it).
                tracing::debug!(error = %e, "cannot look up a challenge response in storage");
                None
            }
            Err(_) => None,
        }
    }
}
