//! The outer layer of every gossip packet and stream frame: a version byte, and with an
//! `encrypt` key, AES-256-GCM with a timestamp inside the authenticated data so a replayed
//! packet is dropped.
//!
//! ```text
//! plain:      0xC0 | payload
//! encrypted:  0xC1 | nonce (12) | AES-256-GCM(ts_ms u64 BE | payload) with its 16-byte tag
//! ```
//! A sealed packet is opened with each installed key in turn (the primary first), so keys can
//! be rotated without a flag day. An agent with a key refuses plain packets, and one without a
//! key refuses sealed ones: a member with a wrong or missing key can neither join nor inject
//! state.
//!
//! Invariant: nothing is handed to foca or to the push/pull decoder unless it opened here.
//! Why: foca trusts what it decodes; authentication is this layer's job alone.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

const PLAIN: u8 = 0xC0;
const SEALED: u8 = 0xC1;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const STAMP_BYTES: usize = 8;
/// A sealed packet older or newer than this (by the sender's clock) is a replay or a clock
/// far off: dropped.
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Nonces remembered to catch a replay inside the window; the oldest is forgotten first.
/// At the window's length this covers ~1,000 packets/s, far above a member's gossip rate.
const SEEN_NONCES_MAX: usize = 65_536;

/// Why a packet was dropped; each kind is counted and logged at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Empty,
    UnknownVersion,
    PlainButKeyed,
    SealedButNoKey,
    BadKey,
    Replayed,
    Truncated,
    /// Opened, but foca or cairn could not decode what was inside.
    Undecodable,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Empty => "empty packet",
            Refusal::UnknownVersion => "unknown gossip protocol version",
            Refusal::PlainButKeyed => "unencrypted packet, but this agent has an encrypt key",
            Refusal::SealedButNoKey => "encrypted packet, but this agent has no encrypt key",
            Refusal::BadKey => "packet does not decrypt with any installed key (wrong encrypt key?)",
            Refusal::Replayed => "replayed or stale packet",
            Refusal::Truncated => "truncated packet",
            Refusal::Undecodable => "undecodable gossip payload",
        }
    }
}

/// A 32-byte AES-256 key as `encrypt` gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; 32]);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

impl GossipKey {
    /// Decodes `encrypt`: standard base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<GossipKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| format!("not valid base64 ({e})"))?;
        let key: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| format!("must be 32 bytes once decoded, not {}", bytes.len()))?;
        Ok(GossipKey(key))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A fresh random key (`cairn keygen`).
    pub fn generate() -> GossipKey {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        GossipKey(key)
    }
}

/// Seals and opens packets with the agent's keys; remembers recent nonces.
pub struct Envelope {
    /// Primary first; empty = gossip in the clear.
    ciphers: Vec<Aes256Gcm>,
    seen: super::seen::RecentSet<[u8; NONCE_BYTES]>,
}

impl Envelope {
    pub fn new(keys: &[GossipKey]) -> Envelope {
        Envelope {
            ciphers: keys.iter().map(|k| Aes256Gcm::new((&k.0).into())).collect(),
            seen: super::seen::RecentSet::new(SEEN_NONCES_MAX),
        }
    }

    /// Replaces the keys (primary first) after a keyring change.
    pub fn set_keys(&mut self, keys: &[GossipKey]) {
        self.ciphers = keys.iter().map(|k| Aes256Gcm::new((&k.0).into())).collect();
    }

    pub fn encrypted(&self) -> bool {
        !self.ciphers.is_empty()
    }

    /// Bytes the envelope adds to a payload.
    pub fn overhead(&self) -> usize {
        if self.encrypted() {
            1 + NONCE_BYTES + STAMP_BYTES + TAG_BYTES
        } else {
            1
        }
    }

    pub fn seal(&self, payload: &[u8], now_ms: u64) -> Vec<u8> {
        let Some(cipher) = self.ciphers.first() else {
            let mut out = Vec::with_capacity(1 + payload.len());
            out.push(PLAIN);
            out.extend_from_slice(payload);
            return out;
        };
        let mut nonce = [0u8; NONCE_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut plain = Vec::with_capacity(STAMP_BYTES + payload.len());
        plain.extend_from_slice(&now_ms.to_be_bytes());
        plain.extend_from_slice(payload);
        // Encryption of an in-memory buffer with a valid key cannot fail (aes-gcm errors only
        // on lengths beyond 2^36 bytes).
        let sealed = cipher.encrypt(Nonce::from_slice(&nonce), plain.as_slice()).expect("AES-GCM encryption");
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEALED);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The payload of `packet`, or why it was refused.
    pub fn open(&mut self, packet: &[u8], now_ms: u64) -> Result<Vec<u8>, Refusal> {
        let (&version, rest) = packet.split_first().ok_or(Refusal::Empty)?;
        match version {
            PLAIN if self.encrypted() => Err(Refusal::PlainButKeyed),
            PLAIN => Ok(rest.to_vec()),
            SEALED if !self.encrypted() => Err(Refusal::SealedButNoKey),
            SEALED => {
                if rest.len() < NONCE_BYTES + STAMP_BYTES + TAG_BYTES {
                    return Err(Refusal::Truncated);
                }
                let (nonce, sealed) = rest.split_at(NONCE_BYTES);
                let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Refusal::Truncated)?;
                let plain = self
                    .ciphers
                    .iter()
                    .find_map(|c| c.decrypt(Nonce::from_slice(&nonce), sealed).ok())
                    .ok_or(Refusal::BadKey)?;
                let (stamp, payload) = plain.split_at(STAMP_BYTES);
                let sent_ms = u64::from_be_bytes(stamp.try_into().map_err(|_| Refusal::Truncated)?);
                if sent_ms.abs_diff(now_ms) > REPLAY_WINDOW_MS || !self.seen.insert(nonce) {
                    return Err(Refusal::Replayed);
                }
                Ok(payload.to_vec())
            }
            _ => Err(Refusal::UnknownVersion),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> GossipKey {
        GossipKey([byte; 32])
    }

    #[test]
    fn sealed_packets_open_once_with_the_right_key() {
        let mut a = Envelope::new(&[key(1)]);
        let packet = a.seal(b"hello", 1_000_000);
        assert_eq!(packet.len(), 5 + a.overhead());
        assert_eq!(a.open(&packet, 1_000_010).unwrap(), b"hello");
        assert_eq!(a.open(&packet, 1_000_010), Err(Refusal::Replayed), "a replay is dropped");
        let mut wrong = Envelope::new(&[key(2)]);
        assert_eq!(wrong.open(&packet, 1_000_010), Err(Refusal::BadKey));
        let mut none = Envelope::new(&[]);
        assert_eq!(none.open(&packet, 1_000_010), Err(Refusal::SealedButNoKey));
        // A rotating keyring opens packets sealed with any installed key.
        let mut rotating = Envelope::new(&[key(2), key(1)]);
        assert_eq!(rotating.open(&packet, 1_000_010).unwrap(), b"hello");
    }

    #[test]
    fn stale_tampered_and_foreign_packets_are_refused() {
        let mut a = Envelope::new(&[key(1)]);
        let packet = a.seal(b"hello", 1_000_000);
        assert_eq!(a.open(&packet, 1_000_000 + REPLAY_WINDOW_MS + 1), Err(Refusal::Replayed));
        let mut tampered = a.seal(b"hello", 1_000_000);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(a.open(&tampered, 1_000_000), Err(Refusal::BadKey));
        assert_eq!(a.open(&tampered[..10], 1_000_000), Err(Refusal::Truncated));
        assert_eq!(a.open(&[], 0), Err(Refusal::Empty));
        assert_eq!(a.open(&[0x42, 1, 2], 0), Err(Refusal::UnknownVersion));
        let plain = Envelope::new(&[]).seal(b"x", 0);
        assert_eq!(a.open(&plain, 0), Err(Refusal::PlainButKeyed));
        assert_eq!(Envelope::new(&[]).open(&plain, 0).unwrap(), b"x");
    }

    #[test]
    fn keys_decode_from_consul_style_base64() {
        let k = GossipKey::generate();
        assert_eq!(GossipKey::from_base64(&k.to_base64()).unwrap(), k);
        assert!(GossipKey::from_base64("not base64!").unwrap_err().contains("base64"));
        assert!(GossipKey::from_base64("AAAA").unwrap_err().contains("32 bytes"));
    }
}
