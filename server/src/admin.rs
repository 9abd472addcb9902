//! Administration of users, grants, public patterns and robots: what the
//! `wharf-server user|grant|revoke|public|robot` commands do.
//!
//! Called by the binary; calls the catalog and the auth module's password
//! hashing. Works on the catalog directly, so it runs beside a live server.

use crate::auth::scope::{Actions, valid_pattern};
use crate::auth::{hash_password, random_secret};
use crate::catalog::{Catalog, CatalogError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid user name {0:?}: use 1-64 letters, digits, '.', '_' or '-'")]
    BadUserName(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("invalid repository pattern {0:?}: lower-case name characters and '*' only")]
    BadPattern(String),
    #[error("invalid actions {0:?}: a comma-separated list of pull, push, delete")]
    BadActions(String),
    #[error("no grant of {pattern:?} to {user:?}")]
    NoSuchGrant { user: String, pattern: String },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// User names go into Basic credentials (`name:password`), so no colon,
/// and into logs, so nothing exotic.
fn check_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadUserName(name.to_owned()))
    }
}

fn check_pattern(p: &str) -> Result<()> {
    if valid_pattern(p) {
        Ok(())
    } else {
        Err(AdminError::BadPattern(p.to_owned()))
    }
}

pub async fn add_user(catalog: &Catalog, name: &str, password: &str, admin: bool) -> Result<()> {
    check_user_name(name)?;
    if password.is_empty() {
        return Err(AdminError::EmptyPassword);
    }
    if !catalog
        .create_user(name, &hash_password(password)?, admin, false)
        .await?
    {
        return Err(AdminError::UserExists(name.to_owned()));
    }
    Ok(())
}

pub async fn remove_user(catalog: &Catalog, name: &str) -> Result<()> {
    if catalog.delete_user(name).await? {
        Ok(())
    } else {
        Err(AdminError::NoSuchUser(name.to_owned()))
    }
}

pub async fn set_password(catalog: &Catalog, name: &str, password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(AdminError::EmptyPassword);
    }
    if catalog
        .set_password(name, &hash_password(password)?)
        .await?
    {
        Ok(())
    } else {
        Err(AdminError::NoSuchUser(name.to_owned()))
    }
}

pub async fn grant(catalog: &Catalog, user: &str, pattern: &str, actions: &str) -> Result<Actions> {
    check_pattern(pattern)?;
    let parsed = Actions::parse(actions, true)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| AdminError::BadActions(actions.to_owned()))?;
    if catalog
        .set_grant(user, pattern, &parsed.to_string())
        .await?
    {
        Ok(parsed)
    } else {
        Err(AdminError::NoSuchUser(user.to_owned()))
    }
}

pub async fn revoke(catalog: &Catalog, user: &str, pattern: &str) -> Result<()> {
    if catalog.revoke_grant(user, pattern).await? {
        Ok(())
    } else {
        Err(AdminError::NoSuchGrant {
            user: user.to_owned(),
            pattern: pattern.to_owned(),
        })
    }
}

pub async fn set_public(catalog: &Catalog, pattern: &str, public: bool) -> Result<()> {
    check_pattern(pattern)?;
    catalog.set_public(pattern, public).await?;
    Ok(())
}

/// Creates a robot account with pull rights on `patterns`; returns its
/// secret, which is shown once and stored only as a hash.
pub async fn add_robot(catalog: &Catalog, name: &str, pull_patterns: &[String]) -> Result<String> {
    check_user_name(name)?;
    for p in pull_patterns {
        check_pattern(p)?;
    }
    let secret = random_secret();
    if !catalog
        .create_user(name, &hash_password(&secret)?, false, true)
        .await?
    {
        return Err(AdminError::UserExists(name.to_owned()));
    }
    for p in pull_patterns {
        catalog
            .set_grant(name, p, &Actions::PULL.to_string())
            .await?;
    }
    Ok(secret)
}

/// One line per user for `user list`: name, kind, and grants.
pub async fn list_users(catalog: &Catalog) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for u in catalog.users().await? {
        let kind = match (u.is_admin, u.is_robot) {
            (true, _) => "admin",
            (false, true) => "robot",
            (false, false) => "user",
        };
        let grants = catalog
            .grants(u.id)
            .await?
            .into_iter()
            .map(|(p, a)| format!("{p}={a}"))
            .collect::<Vec<_>>()
            .join(" ");
        lines.push(format!("{}\t{kind}\t{grants}", u.name));
    }
    Ok(lines)
}
