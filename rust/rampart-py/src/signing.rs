//! Signatures on what Rampart sends gateways (docs/protocol.md, "Signatures"): Ed25519 over
//! `rampart-sig-v1\n<subject>\n<body>`, keys as NATS NKEYs (`nkeys` crate: the public key is the
//! key id), the signature base64url without padding.

use std::collections::{HashMap, VecDeque};

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha2::{Digest, Sha256};

/// What is signed, before the subject and the body.
pub const DOMAIN: &[u8] = b"rampart-sig-v1\n";

fn signed_bytes(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(DOMAIN.len() + subject.len() + 1 + body.len());
    data.extend_from_slice(DOMAIN);
    data.extend_from_slice(subject.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(body);
    data
}

/// An Ed25519 key pair from an NKEY seed (`S...`). Never printed: its `repr` shows the public key.
#[pyclass(name = "SigningKey", module = "rampart._core", frozen)]
pub struct PySigningKey {
    pair: KeyPair,
    public: String,
}

#[pymethods]
impl PySigningKey {
    /// From an NKEY seed (`SU...`, as `nsc` and `nk` write them); `ValueError` if it is not one.
    #[new]
    fn new(seed: &str) -> PyResult<Self> {
        let pair = KeyPair::from_seed(seed.trim())
            .map_err(|e| PyValueError::new_err(format!("not an NKEY seed: {e}")))?;
        let public = pair.public_key();
        Ok(PySigningKey { pair, public })
    }

    /// A new user key pair from the operating system's random source.
    #[staticmethod]
    fn generate() -> Self {
        let pair = KeyPair::new_user();
        let public = pair.public_key();
        PySigningKey { pair, public }
    }

    /// The public key (`U...`): the key id gateways trust.
    #[getter]
    fn public_key(&self) -> &str {
        &self.public
    }

    /// The seed, to store (mode 0600): whoever has it can sign as Rampart.
    fn seed(&self) -> PyResult<String> {
        self.pair
            .seed()
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The raw 64-byte Ed25519 signature of `data`.
    fn sign<'py>(&self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let sig = self
            .pair
            .sign(data)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &sig))
    }

    /// The `Rampart-Sig` header value of a message on `subject` with `body`.
    fn sign_message(&self, subject: &str, body: &[u8]) -> PyResult<String> {
        let sig = self
            .pair
            .sign(&signed_bytes(subject, body))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(BASE64URL_NOPAD.encode(&sig))
    }

    fn __repr__(&self) -> String {
        format!("SigningKey(public_key={:?})", self.public)
    }
}

/// Whether `signature` (a `Rampart-Sig` header value) is `public_key`'s signature of the message
/// on `subject` with `body`. False for anything malformed: a bad key, bad base64, a wrong length.
#[pyfunction]
pub fn verify_message(public_key: &str, subject: &str, body: &[u8], signature: &str) -> bool {
    KeyPair::from_public_key(public_key)
        .is_ok_and(|pair| verify_with(&pair, subject, body, signature))
}

/// `signature` (base64url, no padding) checked against `pair` over the signed bytes.
fn verify_with(pair: &KeyPair, subject: &str, body: &[u8], signature: &str) -> bool {
    let Ok(sig) = BASE64URL_NOPAD.decode(signature.as_bytes()) else {
        return false;
    };
    sig.len() == 64 && pair.verify(&signed_bytes(subject, body), &sig).is_ok()
}

/// The public keys a gateway trusts, decoded once (verifying with a decoded key saves the
/// base32 decode, the checksum and the point decompression on every message).
#[pyclass(name = "KeyRing", module = "rampart._core", frozen)]
pub struct PyKeyRing {
    keys: HashMap<String, KeyPair>,
}

#[pymethods]
impl PyKeyRing {
    /// `ValueError` naming the first key that is not an NKEY public user key.
    #[new]
    fn new(keys: Vec<String>) -> PyResult<Self> {
        let mut ring = HashMap::new();
        for key in keys {
            if !key.starts_with('U') {
                return Err(PyValueError::new_err(format!(
                    "not an NKEY public user key: {key}"
                )));
            }
            let pair = KeyPair::from_public_key(&key).map_err(|e| {
                PyValueError::new_err(format!("not an NKEY public key: {key}: {e}"))
            })?;
            ring.insert(key, pair);
        }
        Ok(PyKeyRing { keys: ring })
    }

    fn __contains__(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    fn __len__(&self) -> usize {
        self.keys.len()
    }

    /// Whether `signature` is the signature of the message by `key`, one of these keys.
    fn verify(&self, key: &str, subject: &str, body: &[u8], signature: &str) -> bool {
        self.keys
            .get(key)
            .is_some_and(|pair| verify_with(pair, subject, body, signature))
    }
}

/// SHA-256(`reveal` + the signed bytes of the message on `subject` with `body`): the commitment
/// to a halt signed in advance (docs/protocol.md, "Armed halts").
fn commitment(reveal: &[u8], subject: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(reveal);
    h.update(DOMAIN);
    h.update(subject.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().into()
}

/// The `commit` of an armed halt: base64url (no padding) of its commitment.
#[pyfunction]
pub fn armed_commit(reveal: &[u8], subject: &str, body: &[u8]) -> String {
    BASE64URL_NOPAD.encode(&commitment(reveal, subject, body))
}

/// The halts a gateway holds armed: commitments learned from Rampart's signed heartbeats, each
/// accepted once, in place of an Ed25519 verification (docs/protocol.md, "Armed halts").
#[pyclass(name = "ArmedHalts", module = "rampart._core")]
pub struct PyArmedHalts {
    valid_until: HashMap<[u8; 32], i64>,
    // in the order they came (one validity: the order they expire), to forget the expired
    order: VecDeque<([u8; 32], i64)>,
    capacity: usize,
}

#[pymethods]
impl PyArmedHalts {
    #[new]
    #[pyo3(signature = (capacity = 65_536))]
    fn new(capacity: usize) -> Self {
        PyArmedHalts {
            valid_until: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn __len__(&self) -> usize {
        self.valid_until.len()
    }

    /// Keep `(commit, valid_until)` pairs (commit: base64url of 32 bytes; anything else is
    /// skipped), forget those expired at `now` (ns) and the oldest beyond the capacity.
    /// Returns how many were kept.
    fn arm(&mut self, commits: Vec<(String, i64)>, now: i64) -> usize {
        let mut kept = 0;
        for (commit, until) in commits {
            let Ok(bytes) = BASE64URL_NOPAD.decode(commit.as_bytes()) else {
                continue;
            };
            let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                continue;
            };
            if until > now {
                self.valid_until.insert(key, until);
                self.order.push_back((key, until));
                kept += 1;
            }
        }
        while let Some(&(key, until)) = self.order.front() {
            let held = self.valid_until.get(&key).copied();
            if held == Some(until) && until > now && self.valid_until.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            if held == Some(until) {
                self.valid_until.remove(&key);
            }
        }
        kept
    }

    /// Whether the message on `subject` with `body`, revealing `reveal` (the `Rampart-Reveal`
    /// header, base64url), is a halt armed here: if so it is used up.
    fn take(&mut self, reveal: &str, subject: &str, body: &[u8]) -> bool {
        let Ok(secret) = BASE64URL_NOPAD.decode(reveal.as_bytes()) else {
            return false;
        };
        self.valid_until
            .remove(&commitment(&secret, subject, body))
            .is_some()
    }
}

/// Whether `key` is an NKEY public user key (`U...`, checksum included).
#[pyfunction]
pub fn is_public_key(key: &str) -> bool {
    key.starts_with('U') && KeyPair::from_public_key(key).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_subject_and_body() {
        let key = PySigningKey::generate();
        let other = PySigningKey::generate();
        let sig = key.sign_message("rampart.cmd.gw1", b"{}").unwrap();
        assert!(verify_message(&key.public, "rampart.cmd.gw1", b"{}", &sig));
        assert!(!verify_message(
            &other.public,
            "rampart.cmd.gw1",
            b"{}",
            &sig
        ));
        assert!(!verify_message(&key.public, "rampart.cmd.gw2", b"{}", &sig));
        assert!(!verify_message(
            &key.public,
            "rampart.cmd.gw1",
            b"{ }",
            &sig
        ));
        assert!(!verify_message(
            &key.public,
            "rampart.cmd.gw1",
            b"{}",
            "not base64!"
        ));
        assert!(!verify_message("Ubad", "rampart.cmd.gw1", b"{}", &sig));
        assert!(is_public_key(&key.public) && !is_public_key("Ubad"));
        let ring = PyKeyRing::new(vec![key.public.clone()]).unwrap();
        assert!(ring.verify(&key.public, "rampart.cmd.gw1", b"{}", &sig));
        assert!(!ring.verify(&other.public, "rampart.cmd.gw1", b"{}", &sig));
        assert!(PyKeyRing::new(vec!["Ubad".into()]).is_err());
    }

    #[test]
    fn an_armed_halt_is_taken_once_and_only_for_its_bytes() {
        let reveal = [7u8; 32];
        let body = b"{\"kind\":\"halt\"}";
        let commit = armed_commit(&reveal, "rampart.cmd.gw1", body);
        let shown = BASE64URL_NOPAD.encode(&reveal);
        let mut armed = PyArmedHalts::new(16);
        assert_eq!(
            armed.arm(vec![(commit.clone(), 100), ("not-base64!".into(), 100)], 10),
            1
        );
        assert!(!armed.take(&shown, "rampart.cmd.gw2", body)); // another subject
        assert!(!armed.take(&shown, "rampart.cmd.gw1", b"{\"kind\":\"resume\"}")); // other bytes
        assert!(!armed.take(&BASE64URL_NOPAD.encode(&[8u8; 32]), "rampart.cmd.gw1", body));
        assert!(armed.take(&shown, "rampart.cmd.gw1", body));
        assert!(!armed.take(&shown, "rampart.cmd.gw1", body)); // used up
    }

    #[test]
    fn armed_halts_expire_and_are_bounded() {
        let mut armed = PyArmedHalts::new(2);
        let c = |i: u8| armed_commit(&[i; 32], "s", b"b");
        armed.arm(vec![(c(1), 50), (c(2), 100)], 10);
        assert_eq!(armed.__len__(), 2);
        armed.arm(vec![(c(3), 100)], 10); // over capacity: the oldest goes
        assert_eq!(armed.__len__(), 2);
        assert!(!armed.take(&BASE64URL_NOPAD.encode(&[1u8; 32]), "s", b"b"));
        armed.arm(vec![(c(4), 5)], 60); // already expired: not kept; nothing else expired
        assert_eq!(armed.__len__(), 2);
        armed.arm(vec![], 100); // both expire at 100
        assert_eq!(armed.__len__(), 0);
    }
}
