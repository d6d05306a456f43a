//! Who is calling: Bearer JWTs (HS256) and Basic personal access tokens, and
//! the signatures of the pre-signed upload and download URLs.
//!
//! - `Authorization: Bearer <jwt>`: a token from `sluice auth get-token`,
//!   signed with the server key; its claims name the organization, the user
//!   and the user's token generation, which must still be the user's
//!   (`sluice auth revoke` moves it on).
//! - `Authorization: Basic base64("user-<id>:<personal access token>")`: the
//!   user's token is checked against its SHA-256 kept in the store.
//!
//! The key is `SLUICE_JWT_KEY` (or the file `SLUICE_JWT_KEY_FILE` names)
//! when set, else a random key kept in the metadata store.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_domain::{OrganizationId, UserId};

type HmacSha256 = Hmac<Sha256>;

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub organization: OrganizationId,
    pub user: Option<UserId>,
}

/// A credential as the request carried it, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Bearer(String),
    UserToken { user: String, token: String },
}

impl Credential {
    /// Reads an `Authorization` header value.
    pub(crate) fn parse(header: &str) -> Result<Credential, String> {
        let (scheme, rest) = header
            .trim()
            .split_once(' ')
            .ok_or("malformed Authorization header")?;
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => Ok(Credential::Bearer(rest.trim().to_owned())),
            "basic" => {
                let decoded = STANDARD
                    .decode(rest.trim())
                    .map_err(|_| "Basic credentials are not valid base64")?;
                let text =
                    String::from_utf8(decoded).map_err(|_| "Basic credentials are not UTF-8")?;
                let (user, token) = text.split_once(':').ok_or("Basic credentials lack `:`")?;
                let user = user
                    .strip_prefix("user-")
                    .ok_or("Basic credentials must be `user-<user id>:<personal access token>`")?;
                Ok(Credential::UserToken {
                    user: user.to_owned(),
                    token: token.to_owned(),
                })
            }
            other => Err(format!("unsupported authorization scheme `{other}`")),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    org: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    iat: i64,
    exp: i64,
    /// The user's token generation when it was signed.
    #[serde(default)]
    gen: i64,
}

/// What a JWT with a good signature says; [`Control::authenticate`]
/// checks the user is real and the generation current.
///
/// [`Control::authenticate`]: crate::control::Control::authenticate
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub organization: OrganizationId,
    pub user: UserId,
    pub generation: i64,
}

/// The server's signing key.
#[derive(Clone)]
pub struct Keys {
    secret: Vec<u8>,
}

/// The server's key could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl Keys {
    pub fn new(secret: Vec<u8>) -> Keys {
        Keys { secret }
    }

    /// The sealer of connection secrets, derived from this key.
    pub fn sealer(&self) -> crate::secrets::Sealer {
        crate::secrets::Sealer::from_secret(&self.secret)
    }

    /// The server's key: `SLUICE_JWT_KEY`, else the file `SLUICE_JWT_KEY_FILE`
    /// names, else the one in the metadata store (made on first use). Never
    /// a file in the data dir, where user code's folders are: a key found
    /// at `<data_dir>/jwt.key` (where sluice kept it before) is moved into
    /// the store and the file removed.
    pub async fn load(
        store: &dyn sluice_store::MetadataStore,
        data_dir: &Path,
    ) -> Result<Keys, KeyError> {
        if let Some(k) = std::env::var("SLUICE_JWT_KEY")
            .ok()
            .filter(|k| !k.is_empty())
        {
            return Ok(Keys::new(k.into_bytes()));
        }
        if let Some(f) = std::env::var_os("SLUICE_JWT_KEY_FILE").filter(|f| !f.is_empty()) {
            let k = std::fs::read_to_string(&f)
                .map_err(|e| KeyError(format!("cannot read SLUICE_JWT_KEY_FILE: {e}")))?;
            return Ok(Keys::new(k.trim().as_bytes().to_vec()));
        }
        let legacy = data_dir.join("jwt.key");
        let old = std::fs::read_to_string(&legacy)
            .ok()
            .map(|k| k.trim().to_owned());
        let candidate = old.clone().unwrap_or_else(|| hex::encode(random_bytes(32)));
        let key = store
            .server_secret("signing-key", &candidate)
            .await
            .map_err(|e| KeyError(format!("cannot read the key from the store: {e}")))?;
        if old.as_deref() == Some(key.as_str()) {
            let _ = std::fs::remove_file(&legacy);
        }
        Ok(Keys::new(key.into_bytes()))
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(data);
        mac.verify_slice(signature).is_ok()
    }

    /// A JWT for `user` of `org` in the user's token `generation`, valid
    /// for `ttl_secs`.
    pub fn issue_jwt(
        &self,
        org: &OrganizationId,
        user: &UserId,
        generation: i64,
        now: i64,
        ttl_secs: i64,
    ) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = Claims {
            org: org.to_string(),
            sub: Some(user.to_string()),
            iat: now,
            exp: now + ttl_secs,
            gen: generation,
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signing_input = format!("{header}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{sig}")
    }

    /// Checks a JWT's signature, algorithm and expiry, and that it names a user.
    pub(crate) fn verify_jwt(&self, token: &str, now: i64) -> Result<JwtClaims, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the bearer token is not a JWT".into());
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("the JWT header is malformed")?;
        if header["alg"] != "HS256" {
            return Err("the JWT must be signed with HS256".into());
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "the JWT signature is malformed")?;
        if !self.verify(format!("{h}.{b}").as_bytes(), &sig) {
            return Err("the JWT signature does not match".into());
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the JWT claims are malformed")?;
        if claims.exp <= now {
            return Err("the JWT has expired".into());
        }
        let user = claims.sub.as_deref().ok_or("the JWT names no user")?;
        Ok(JwtClaims {
            organization: OrganizationId::parse(&claims.org).map_err(|e| e.to_string())?,
            user: UserId::parse(user).map_err(|e| e.to_string())?,
            generation: claims.gen,
        })
    }

    /// A URL-safe token granting `purpose` on `subject` until `expires` (unix secs).
    pub fn presign(&self, purpose: &str, subject: &str, expires: i64) -> String {
        let payload = format!("{purpose}:{subject}:{expires}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(payload.as_bytes()));
        format!("{}.{sig}", URL_SAFE_NO_PAD.encode(payload))
    }

    /// Checks a pre-signed token; answers its subject.
    pub(crate) fn verify_presigned(
        &self,
        purpose: &str,
        token: &str,
        now: i64,
    ) -> Result<String, String> {
        let (p, s) = token.split_once('.').ok_or("malformed signed URL")?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "malformed signed URL")?;
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "malformed signed URL")?;
        if !self.verify(&payload, &sig) {
            return Err("the URL's signature does not match".into());
        }
        let payload = String::from_utf8(payload).map_err(|_| "malformed signed URL")?;
        let mut it = payload.splitn(3, ':');
        let (Some(got), Some(subject), Some(exp)) = (it.next(), it.next(), it.next()) else {
            return Err("malformed signed URL".into());
        };
        if got != purpose {
            return Err(format!("this URL is for {got}, not {purpose}"));
        }
        if exp.parse::<i64>().map_err(|_| "malformed signed URL")? <= now {
            return Err("this signed URL has expired".into());
        }
        Ok(subject.to_owned())
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A new personal access token.
pub fn new_personal_access_token() -> String {
    hex::encode(random_bytes(20))
}

/// What the store keeps of a personal access token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_verify_and_expire() {
        let keys = Keys::new(b"k".to_vec());
        let org = OrganizationId::generate();
        let user = UserId::generate();
        let jwt = keys.issue_jwt(&org, &user, 3, 1000, 60);
        let p = keys.verify_jwt(&jwt, 1010).unwrap();
        assert_eq!(
            p,
            JwtClaims {
                organization: org.clone(),
                user,
                generation: 3
            }
        );
        assert!(keys.verify_jwt(&jwt, 1060).unwrap_err().contains("expired"));
        assert!(Keys::new(b"other".to_vec())
            .verify_jwt(&jwt, 1010)
            .unwrap_err()
            .contains("signature"));
        let mut forged = jwt.clone();
        forged.push('x');
        assert!(keys.verify_jwt(&forged, 1010).is_err());
        assert!(keys.verify_jwt("abc", 1010).is_err());
    }

    #[test]
    fn basic_credentials_name_the_user() {
        let header = format!("Basic {}", STANDARD.encode("user-1234567890123:secret"));
        assert_eq!(
            Credential::parse(&header).unwrap(),
            Credential::UserToken {
                user: "1234567890123".into(),
                token: "secret".into()
            }
        );
        let bad = format!("Basic {}", STANDARD.encode("1234567890123:secret"));
        assert!(Credential::parse(&bad).unwrap_err().contains("user-"));
        assert!(Credential::parse("Digest x").is_err());
    }

    #[test]
    fn presigned_tokens_are_bound_to_purpose_and_time() {
        let keys = Keys::new(b"k".to_vec());
        let t = keys.presign("upload", "ver-1111111111111111", 100);
        assert_eq!(
            keys.verify_presigned("upload", &t, 99).unwrap(),
            "ver-1111111111111111"
        );
        assert!(keys
            .verify_presigned("upload", &t, 100)
            .unwrap_err()
            .contains("expired"));
        assert!(keys.verify_presigned("download", &t, 99).is_err());
        assert!(keys
            .verify_presigned("upload", &t.replace('.', ".x"), 99)
            .is_err());
    }
}
