//! Key/value entries.

use serde::{Deserialize, Serialize};

/// One KV entry as stored. The value is kept as raw bytes; the HTTP layer base64-encodes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub flags: u64,
    /// `None` when the key was written with an empty body, which Consul reports as `null`.
    pub value: Option<Vec<u8>>,
    pub lock_index: u64,
    pub session: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}
