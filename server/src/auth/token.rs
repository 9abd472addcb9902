//! Signing and verifying the registry's JWTs.
//!
//! Tokens are ES256 (ECDSA P-256) JWTs made with `jsonwebtoken`. The private
//! key is generated on first start and kept 0600 in the data directory (or
//! read from a configured path). Verification pins the algorithm to ES256,
//! so `alg: none` and HMAC-with-the-public-key confusion are refused, and
//! checks issuer, audience, expiry and not-before, with the leeway the
//! caller gives (see `auth.leeway_secs`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest as _;

use super::AuthError;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl TokenKeys {
    /// Reads the PKCS#8 PEM key at `path`, creating it (0600) if missing.
    pub fn load_or_create(path: &Path) -> Result<TokenKeys, AuthError> {
        let key_err = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::Key(format!("{what} {}: {e}", path.display()))
        };
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = p256::SecretKey::random(&mut rand_core::OsRng);
                let pem = secret
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| key_err("cannot encode new key for", &e))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| key_err("cannot create directory for", &e))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| key_err("cannot create", &e))?;
                f.write_all(pem.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| key_err("cannot write", &e))?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                pem.to_string()
            }
            Err(e) => return Err(key_err("cannot read", &e)),
        };
        Self::from_pem(&pem).map_err(|e| key_err("invalid key in", &e))
    }

    pub fn from_pem(pem: &str) -> Result<TokenKeys, String> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        let public = secret.public_key();
        let public_der = public.to_public_key_der().map_err(|e| e.to_string())?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let kid = hex::encode(&sha2::Sha256::digest(public_der.as_bytes())[..16]);
        Ok(TokenKeys {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?,
            kid,
        })
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing a token: {e}")))
    }

    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        leeway_secs: u64,
    ) -> Result<T, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::InvalidToken("token too long".into()));
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = leeway_secs;
        v.validate_nbf = true;
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))
    }
}
