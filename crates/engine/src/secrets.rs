//! Connection secrets, sealed at rest.
//!
//! A job's connection URLs (which carry passwords) are stored sealed with
//! ChaCha20-Poly1305 under a key derived from the server's key
//! (`SLUICE_JWT_KEY`, else the one kept in the metadata store): `v1:` + base64 of the
//! nonce and the ciphertext. Only a worker opens them, to connect; every
//! face shows [`redact`]ed URLs. Losing the server's key makes the stored
//! connections unreadable (jobs then fail saying so), never readable by
//! someone else.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// The key secrets are derived with ([`Sealer::derive`]).
    derive: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

const PREFIX: &str = "v1:";

impl Sealer {
    /// The sealer of a server key (a key of its own, derived with HMAC).
    pub fn from_secret(secret: &[u8]) -> Sealer {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(b"sluice connection secrets v1");
        let key = mac.finalize().into_bytes();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(b"sluice derived secrets v1");
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            derive: mac.finalize().into_bytes().into(),
        }
    }

    /// A secret of this server for `label` (the same on every process that
    /// shares the server key): a warehouse role's password, say.
    pub fn derive(&self, label: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.derive).expect("any key length");
        mac.update(label.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::from_slice(&nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(nonce, plain.as_bytes())
            .expect("sealing in memory does not fail");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        )
    }

    pub(crate) fn open(&self, sealed: &str) -> Result<String, String> {
        let unreadable = || {
            "a stored connection cannot be opened: it was sealed with another server key \
             (SLUICE_JWT_KEY, or the one in the metadata store)"
                .to_string()
        };
        let body = sealed.strip_prefix(PREFIX).ok_or_else(unreadable)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| unreadable())?;
        if raw.len() < 12 {
            return Err(unreadable());
        }
        let (nonce, data) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), data)
            .map_err(|_| unreadable())?;
        String::from_utf8(plain).map_err(|_| unreadable())
    }
}

/// A connection URL with its password taken out (user info and any
/// `password=` parameter).
pub fn redact(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..s], &url[at + 1..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let params = out[q + 1..]
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{}?{params}", &out[..q]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_urls_open_with_the_same_key_only() {
        let a = Sealer::from_secret(b"one");
        let url = "postgres://app:s3cret@db/warehouse";
        let sealed = a.seal(url);
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, a.seal(url), "a fresh nonce every time");
        assert_eq!(a.open(&sealed).unwrap(), url);
        let err = Sealer::from_secret(b"two").open(&sealed).unwrap_err();
        assert!(err.contains("another server key"), "{err}");
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/w"),
            "postgres://app:***@db:5432/w"
        );
        assert_eq!(
            redact("mysql://db/w?user=a&password=x"),
            "mysql://db/w?user=a&password=***"
        );
        assert_eq!(redact("sqlite:///tmp/w.db"), "sqlite:///tmp/w.db");
    }
}
