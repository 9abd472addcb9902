//! Authentication and authorization: users, passwords, grants, and the
//! Docker/OCI token protocol.
//!
//! Called by the HTTP layer (the `/token` endpoint and the check in front of
//! every `/v2/` route) and by the admin CLI; calls the catalog. It never sees
//! HTTP types: credentials, scopes and client addresses come in as values.
//!
//! Secrets: clear passwords exist only for the length of a hash or a verify
//! call and are never logged; tokens are never logged either.

pub mod limiter;
pub mod scope;
pub mod token;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use self::limiter::Limiter;
use self::scope::{Actions, Resource, Scope, pattern_matches};
use self::token::TokenKeys;
use crate::catalog::{Catalog, CatalogError, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed logins; retry in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid scope {0:?}")]
    InvalidScope(String),
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "auth is enabled but there is no user yet: create the first admin with \
         `wharf-server user add admin --admin --password-stdin`, or start once with \
         WHARF_ADMIN_PASSWORD set"
    )]
    NoAdmin,
    #[error("token key: {0}")]
    Key(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    pub service: String,
    /// Token endpoint URL for challenges; None derives it from the Host header.
    pub realm: Option<String>,
    /// The listener serves TLS: a derived realm is `https://`.
    pub https: bool,
    pub token_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Seconds a token stays acceptable past its `exp` (and before `nbf`).
    pub leeway_secs: u64,
    pub key_path: PathBuf,
    pub max_failures: u32,
    pub failure_window_secs: u64,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    Anonymous,
    User(UserRecord),
}

impl Principal {
    fn subject(&self) -> &str {
        match self {
            Principal::Anonymous => "",
            Principal::User(u) => &u.name,
        }
    }
}

/// What a principal may do, loaded once per token request.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    pub admin: bool,
    pub grants: Vec<(String, Actions)>,
    pub public: Vec<String>,
}

impl Permissions {
    pub fn allowed(&self, repo: &str) -> Actions {
        if self.admin {
            return Actions::ALL;
        }
        let mut acc = Actions::NONE;
        for (pattern, actions) in &self.grants {
            if pattern_matches(pattern, repo) {
                acc = acc.union(*actions);
            }
        }
        if self.public.iter().any(|p| pattern_matches(p, repo)) {
            acc = acc.union(Actions::PULL);
        }
        acc
    }
}

/// One entry of a token's `access` claim, as distribution's tokens have it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    /// The user name; empty for an anonymous token.
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
}

impl AccessClaims {
    /// The actions this token grants on a repository.
    pub fn actions_on(&self, repo: &str) -> Actions {
        self.access
            .iter()
            .filter(|a| a.kind == "repository" && a.name == repo)
            .fold(Actions::NONE, |acc, a| {
                acc.union(Actions::parse(&a.actions.join(","), false).unwrap_or_default())
            })
    }

    pub fn has_catalog(&self) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "registry" && a.name == "catalog")
    }
}

/// A long-lived token that `docker login` keeps instead of the password.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    /// The user's password version when issued: a password change revokes it.
    pwv: i64,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: u64,
}

pub struct Auth {
    catalog: Catalog,
    keys: TokenKeys,
    config: AuthConfig,
    limiter: Limiter,
    /// Verified against when the user does not exist, so that an unknown
    /// name costs the same time as a wrong password.
    decoy_hash: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("hashing a password: {e}")))
}

/// argon2 verification; the final comparison is constant-time.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A random secret for robots: 32 bytes, URL-safe base64.
pub fn random_secret() -> String {
    use base64::Engine;
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Auth {
    pub fn new(catalog: Catalog, config: AuthConfig) -> Result<Auth> {
        let keys = TokenKeys::load_or_create(&config.key_path)?;
        let limiter = Limiter::new(config.max_failures, config.failure_window_secs);
        Ok(Auth {
            catalog,
            keys,
            config,
            limiter,
            decoy_hash: hash_password(&random_secret())?,
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Refuses to run with auth on and nobody able to log in; creates the
    /// first admin from `admin_password` when one is given.
    pub async fn ensure_admin(&self, admin_password: Option<&str>) -> Result<()> {
        if self.catalog.user_count().await? > 0 {
            return Ok(());
        }
        match admin_password.filter(|p| !p.is_empty()) {
            Some(pw) => {
                // Replicas starting together on one new catalog race here; the
                // insert is ON CONFLICT DO NOTHING, so one makes the user.
                if self
                    .catalog
                    .create_user("admin", &hash_password(pw)?, true, false)
                    .await?
                {
                    tracing::info!(
                        "created the first admin user \"admin\" from WHARF_ADMIN_PASSWORD"
                    );
                }
                Ok(())
            }
            None => Err(AuthError::NoAdmin),
        }
    }

    /// Checks a user's password, rate-limited per user and per client.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<UserRecord> {
        let keys = limiter_keys(username, client);
        if let Some(retry_after) = self.limiter.blocked(&keys) {
            return Err(AuthError::RateLimited { retry_after });
        }
        let user = self.catalog.user(username).await?;
        let hash = user
            .as_ref()
            .map_or(self.decoy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = verify_password(hash, password) && user.is_some();
        match user {
            Some(u) if ok => {
                // Clears the user's count only: the address keeps its own.
                self.limiter.succeeded(&keys[..1]);
                Ok(u)
            }
            _ => {
                self.limiter.failed(&keys);
                tracing::warn!(user = username, client = ?client, "failed login");
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Grants and public patterns that apply to a principal.
    pub async fn permissions(&self, principal: &Principal) -> Result<Permissions> {
        let public = self.catalog.public_patterns().await?;
        let (admin, grants) = match principal {
            Principal::Anonymous => (false, Vec::new()),
            Principal::User(u) => {
                let grants = self
                    .catalog
                    .grants(u.id)
                    .await?
                    .into_iter()
                    .map(|(p, a)| (p, Actions::parse(&a, false).unwrap_or_default()))
                    .collect();
                (u.is_admin, grants)
            }
        };
        Ok(Permissions {
            admin,
            grants,
            public,
        })
    }

    /// Permissions of a token's subject (empty subject: anonymous). A user
    /// removed since the token was issued has only public rights.
    pub async fn permissions_of_subject(&self, subject: &str) -> Result<Permissions> {
        let principal = match subject {
            "" => Principal::Anonymous,
            name => match self.catalog.user(name).await? {
                Some(u) => Principal::User(u),
                None => Principal::Anonymous,
            },
        };
        self.permissions(&principal).await
    }

    pub fn check_service(&self, service: Option<&str>) -> Result<()> {
        match service {
            Some(s) if s != self.config.service => Err(AuthError::UnknownService(s.to_owned())),
            _ => Ok(()),
        }
    }

    /// Issues an access token granting, for each scope asked, the
    /// intersection of what was asked and what the principal may do.
    pub async fn issue(&self, principal: &Principal, scopes: &[Scope]) -> Result<IssuedToken> {
        let perms = self.permissions(principal).await?;
        let mut access: Vec<AccessEntry> = Vec::new();
        for scope in scopes {
            let entry = match &scope.resource {
                Resource::Repository(repo) => AccessEntry {
                    kind: "repository".into(),
                    name: repo.to_string(),
                    actions: scope
                        .actions
                        .intersect(perms.allowed(repo.as_str()))
                        .names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                },
                // Everyone may list; the listing shows only what they may pull.
                Resource::Catalog => AccessEntry {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                },
            };
            match access
                .iter_mut()
                .find(|a| a.kind == entry.kind && a.name == entry.name)
            {
                Some(existing) => {
                    for a in entry.actions {
                        if !existing.actions.contains(&a) {
                            existing.actions.push(a);
                        }
                    }
                }
                None => access.push(entry),
            }
        }
        let now = now_secs();
        let ttl = self.config.token_ttl_secs;
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: principal.subject().to_owned(),
            aud: self.config.service.clone(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        Ok(IssuedToken {
            token: self.keys.sign(&claims)?,
            expires_in: ttl,
            issued_at: now,
        })
    }

    pub fn verify_access(&self, token: &str) -> Result<AccessClaims> {
        self.keys.verify(
            token,
            &self.config.issuer,
            &self.config.service,
            self.config.leeway_secs,
        )
    }

    fn refresh_audience(&self) -> String {
        format!("{}#refresh", self.config.service)
    }

    pub fn issue_refresh(&self, user: &UserRecord) -> Result<String> {
        let now = now_secs();
        self.keys.sign(&RefreshClaims {
            iss: self.config.issuer.clone(),
            sub: user.name.clone(),
            aud: self.refresh_audience(),
            exp: now + self.config.refresh_ttl_secs,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            pwv: user.password_changed_at,
        })
    }

    /// The user a refresh token stands for, if it is still valid: signed by
    /// us, unexpired, and issued since the user's last password change.
    pub async fn refresh(&self, token: &str) -> Result<UserRecord> {
        let claims: RefreshClaims =
            self.keys
                .verify(token, &self.config.issuer, &self.refresh_audience(), 0)?;
        match self.catalog.user(&claims.sub).await? {
            Some(u) if u.password_changed_at == claims.pwv => Ok(u),
            _ => Err(AuthError::InvalidToken("refresh token revoked".into())),
        }
    }
}

/// The audience of the web UI's session tokens: no registry client accepts
/// them, and no registry token is accepted as a session.
pub const WEB_AUDIENCE: &str = "wharf-web";

/// A signed-in browser session (the web UI's cookie holds it signed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    /// The CSRF token of this session: forms carry it, POSTs must match it.
    pub csrf: String,
    /// The user's password version when signed in: a password change ends
    /// the session.
    pub pwv: i64,
}

impl Auth {
    /// A session token for the web UI, valid `ttl_secs`, with a fresh CSRF
    /// token of its own.
    pub fn issue_session(
        &self,
        user: &UserRecord,
        ttl_secs: u64,
    ) -> Result<(String, SessionClaims)> {
        let now = now_secs();
        let claims = SessionClaims {
            iss: self.config.issuer.clone(),
            sub: user.name.clone(),
            aud: WEB_AUDIENCE.to_owned(),
            exp: now + ttl_secs,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            csrf: random_secret(),
            pwv: user.password_changed_at,
        };
        Ok((self.keys.sign(&claims)?, claims))
    }

    /// The user and claims of a web session token: signed by us (ES256
    /// only), audience `wharf-web`, unexpired with no leeway, and the user
    /// still exists with the password it had when it signed in.
    pub async fn verify_session(&self, token: &str) -> Result<(UserRecord, SessionClaims)> {
        let claims: SessionClaims =
            self.keys
                .verify(token, &self.config.issuer, WEB_AUDIENCE, 0)?;
        match self.catalog.user(&claims.sub).await? {
            Some(u) if u.password_changed_at == claims.pwv => Ok((u, claims)),
            _ => Err(AuthError::InvalidToken("session revoked".into())),
        }
    }
}

fn limiter_keys(username: &str, client: Option<IpAddr>) -> Vec<String> {
    let mut keys = vec![format!("user:{username}")];
    if let Some(ip) = client {
        keys.push(format!("ip:{ip}"));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("s3cret"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "s3creT"));
        assert!(!verify_password("garbage", "s3cret"));
    }

    #[test]
    fn permissions_combine_grants_and_public() {
        let p = Permissions {
            admin: false,
            grants: vec![
                ("team/*".into(), Actions::PULL.union(Actions::PUSH)),
                ("tools/linter".into(), Actions::PULL),
            ],
            public: vec!["pub/*".into()],
        };
        assert_eq!(p.allowed("team/app"), Actions::PULL.union(Actions::PUSH));
        assert_eq!(p.allowed("tools/linter"), Actions::PULL);
        assert_eq!(p.allowed("pub/x"), Actions::PULL);
        assert_eq!(p.allowed("other"), Actions::NONE);
        let admin = Permissions {
            admin: true,
            ..Default::default()
        };
        assert_eq!(admin.allowed("anything"), Actions::ALL);
    }
}
