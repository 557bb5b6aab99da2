//! Byte layouts of keys and values in the state-machine tables. Part of the disk format:
//! `tests::record_bytes_are_pinned` fails if any of them changes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;
use crate::model::KvEntry;

/// Separator inside composite keys. Node names, service IDs and check IDs never contain NUL
/// (the HTTP layer rejects it), so `a\0b` sorts all of `a`'s rows together.
pub const SEP: u8 = 0;

pub fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(SEP);
    key.extend_from_slice(b.as_bytes());
    key
}

/// Prefix of every composite key whose first part is `a`.
pub fn pair_prefix(a: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(SEP);
    key
}

pub fn triple_key(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut key = pair_key(a, b);
    key.push(SEP);
    key.extend_from_slice(c.as_bytes());
    key
}

/// Splits a composite key into its parts.
pub fn split_key(key: &[u8]) -> Vec<&str> {
    key.split(|b| *b == SEP).map(|part| std::str::from_utf8(part).unwrap_or("")).collect()
}

pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs (string keys, no floats) cannot fail.
    serde_json::to_vec(value).expect("catalog records always serialize")
}

pub fn decode_json<T: DeserializeOwned>(table: &'static str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_u64(table: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        table,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// KV value layout: flags, create, modify, lock index (u64 BE each), session length (u16 BE),
/// session bytes, then the value itself. Binary so that a 512 KiB value is stored as is.
pub fn encode_kv(entry: &KvEntry) -> Vec<u8> {
    let session = entry.session.as_deref().unwrap_or("");
    let value = entry.value.as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(34 + session.len() + value.len());
    out.extend_from_slice(&entry.flags.to_be_bytes());
    out.extend_from_slice(&entry.create_index.to_be_bytes());
    out.extend_from_slice(&entry.modify_index.to_be_bytes());
    out.extend_from_slice(&entry.lock_index.to_be_bytes());
    out.extend_from_slice(&(session.len() as u16).to_be_bytes());
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(value);
    out
}

pub fn decode_kv(key: &[u8], bytes: &[u8]) -> Result<KvEntry, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        table: "sm_kv",
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    };
    if bytes.len() < 34 {
        return Err(corrupt("record shorter than its header"));
    }
    let word = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let session_len = u16::from_be_bytes([bytes[32], bytes[33]]) as usize;
    let session_end = 34 + session_len;
    if bytes.len() < session_end {
        return Err(corrupt("session length past the end of the record"));
    }
    let session = std::str::from_utf8(&bytes[34..session_end]).map_err(|_| corrupt("session is not UTF-8"))?;
    let value = &bytes[session_end..];
    Ok(KvEntry {
        key: String::from_utf8(key.to_vec()).map_err(|_| corrupt("key is not UTF-8"))?,
        flags: word(0),
        create_index: word(1),
        modify_index: word(2),
        lock_index: word(3),
        session: (!session.is_empty()).then(|| session.to_string()),
        value: (!value.is_empty()).then(|| value.to_vec()),
    })
}

/// Keys of the `sm_session_refs` table: what a session hangs on, then the session (or, for
/// held keys, the session then the key). The leading kind byte keeps the kinds apart.
pub mod session_ref {
    use super::SEP;

    /// `n \0 node \0 session`: the sessions of a node.
    pub fn node(node: &str, session: &str) -> Vec<u8> {
        join(b'n', &[node, session])
    }
    pub fn node_prefix(node: &str) -> Vec<u8> {
        join(b'n', &[node, ""])
    }
    /// `c \0 node \0 check \0 session`: the sessions tied to a check.
    pub fn check(node: &str, check: &str, session: &str) -> Vec<u8> {
        join(b'c', &[node, check, session])
    }
    pub fn check_prefix(node: &str, check: &str) -> Vec<u8> {
        join(b'c', &[node, check, ""])
    }
    /// `k \0 session \0 key`: the KV keys a session holds.
    pub fn held_key(session: &str, key: &str) -> Vec<u8> {
        join(b'k', &[session, key])
    }
    pub fn held_key_prefix(session: &str) -> Vec<u8> {
        join(b'k', &[session, ""])
    }

    fn join(kind: u8, parts: &[&str]) -> Vec<u8> {
        let mut out = vec![kind];
        for part in parts {
            out.push(SEP);
            out.extend_from_slice(part.as_bytes());
        }
        out
    }

    /// The last part of a ref key (the session, or the held key): everything after the
    /// `skip`-th separator. Held keys may themselves contain NUL, so this does not split.
    pub fn tail(key: &[u8], skip: usize) -> String {
        let mut rest = key;
        for _ in 0..skip {
            match rest.iter().position(|b| *b == SEP) {
                Some(at) => rest = &rest[at + 1..],
                None => return String::new(),
            }
        }
        String::from_utf8_lossy(rest).into_owned()
    }
}

/// Keys of the `sm_indexes` table.
pub mod index_key {
    pub fn table(name: &str) -> Vec<u8> {
        format!("t:{name}").into_bytes()
    }
    pub fn service(name: &str) -> Vec<u8> {
        format!("s:{name}").into_bytes()
    }
    pub fn node(name: &str) -> Vec<u8> {
        format!("n:{name}").into_bytes()
    }
    /// Like `service`, but bumped only by changes catalog reads show (not by checks).
    pub fn catalog_service(name: &str) -> Vec<u8> {
        format!("cs:{name}").into_bytes()
    }
    pub fn catalog_node(name: &str) -> Vec<u8> {
        format!("cn:{name}").into_bytes()
    }
}
