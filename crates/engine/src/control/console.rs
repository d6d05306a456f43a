//! The web console's sessions: a person signs in with the credentials
//! sluice already issues (a user id and personal access token) and gets a
//! session token — a JWT of 12 hours, revoked with the user's other tokens
//! (`sluice auth revoke`) — and a CSRF token bound to it by the server's
//! key, which every form that changes something must carry.

use super::*;

/// How long a console session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;

impl Control {
    /// Signs a person in: their user id and personal access token. Answers
    /// who they are and the session token.
    pub async fn sign_in(&self, user: &str, token: &str) -> Result<(Principal, String)> {
        let invalid =
            || ControlError::Unauthorized("invalid user id or personal access token".into());
        if user.is_empty() || token.is_empty() || user.len() > 200 || token.len() > 200 {
            return Err(invalid());
        }
        let id = UserId::parse(user).map_err(|_| invalid())?;
        let u = match self.store.get_user(&id).await {
            Ok(u) => u,
            Err(StoreError::NotFound(_)) => return Err(invalid()),
            Err(e) => return Err(e.into()),
        };
        if u.token_hash != auth::token_hash(token) {
            return Err(invalid());
        }
        let session = self.keys.issue_jwt(
            &u.organization_id,
            &u.id,
            u.token_generation,
            time::now().timestamp(),
            SESSION_SECS,
        );
        Ok((
            Principal {
                organization: u.organization_id,
                user: Some(u.id),
            },
            session,
        ))
    }

    /// Who a session token belongs to (as a bearer token: expired,
    /// revoked or forged ones are refused).
    pub async fn session(&self, session: &str) -> Result<Principal> {
        self.authenticate(Some(&format!("Bearer {session}"))).await
    }

    /// The CSRF token of a session: the server key's signature over it.
    pub fn csrf_token(&self, session: &str) -> String {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(session.as_bytes()));
        self.keys.presign("console-csrf", &digest, 0)
    }

    /// Whether `token` is the CSRF token of `session` (compared in
    /// constant time).
    pub fn csrf_ok(&self, session: &str, token: &str) -> bool {
        let want = self.csrf_token(session);
        want.len() == token.len()
            && want
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}
