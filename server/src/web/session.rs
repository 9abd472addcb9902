//! Who is looking at a page: the session cookie, the CSRF token of forms,
//! and the permissions the page is rendered with.
//!
//! A signed-in browser holds `wharf_session`: a JWT signed with the
//! registry's token key, audience `wharf-web` (so it is no registry token
//! and no registry token is a session), expiring after
//! [`SESSION_TTL_SECS`], checked with no leeway, and ended by a password
//! change (`auth::Auth::verify_session`). It carries the session's CSRF
//! token; every form has it in a hidden field and every POST must send it
//! back. A browser that is not signed in (the sign-in form itself, or any
//! form when auth is off) gets a random `wharf_csrf` cookie instead and the
//! same check (double submit). Both cookies are HttpOnly, SameSite=Strict,
//! Path=/, and Secure when the request came over TLS.
//!
//! Calls the auth service; bounds every cookie it reads.

use axum::http::{HeaderMap, HeaderValue, header};

use super::WebError;
use crate::api::AppState;
use crate::auth::Principal;
use crate::browse::Viewer;

pub const SESSION_COOKIE: &str = "wharf_session";
pub const CSRF_COOKIE: &str = "wharf_csrf";
/// How long a sign-in lasts.
pub const SESSION_TTL_SECS: u64 = 8 * 3600;
/// A `Cookie` header longer than this is ignored whole.
const MAX_COOKIE_HEADER: usize = 8 * 1024;
/// A CSRF token: 32 random bytes, URL-safe base64 without padding.
const CSRF_LEN: usize = 43;

/// The request context of a page.
pub struct Ctx {
    /// Whether the registry has auth on (off: no sign-in, all visible).
    pub auth_on: bool,
    /// The signed-in user, if any.
    pub user: Option<String>,
    /// What the viewer may see and do (everything when auth is off).
    pub viewer: Viewer,
    /// The CSRF token forms carry.
    pub csrf: String,
    /// Whether the request came over TLS (cookies get `Secure`).
    pub secure: bool,
    /// The host the browser used, checked: for the `docker pull` lines.
    pub host: String,
    /// `Set-Cookie` values every response of this request must carry.
    pub set_cookies: Vec<HeaderValue>,
    /// The client's address (the failed-login limiter counts by it).
    pub client: Option<std::net::IpAddr>,
    /// The path and query of this page (where sign-in comes back to).
    pub here: String,
}

/// The value of cookie `name`, if the header is sane and has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// A `Set-Cookie` value with the attributes every cookie of the UI has;
/// `max_age` 0 deletes it, `None` makes a browser-session cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let mut v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        v.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        v.push_str("; Secure");
    }
    // Names and values here are ours (base64url, JWT characters).
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

fn sane_csrf(v: &str) -> bool {
    v.len() == CSRF_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The Host header if it is a plain `host[:port]` (letters, digits, `.-:[]`,
/// at most 255 bytes), else `localhost`. It is only ever shown, escaped.
pub fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("localhost")
        .to_owned()
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Ctx {
    /// Reads the cookies of a request: a valid session signs the user in;
    /// a missing, expired, forged or revoked one leaves an anonymous viewer
    /// (and the stale cookie is cleared).
    pub async fn load(
        state: &AppState,
        headers: &HeaderMap,
        secure: bool,
    ) -> Result<Ctx, WebError> {
        let host = host_of(headers);
        let mut set_cookies = Vec::new();
        let Some(auth) = &state.auth else {
            let csrf = anonymous_csrf(headers, secure, &mut set_cookies);
            return Ok(Ctx {
                auth_on: false,
                user: None,
                viewer: Viewer::all(),
                csrf,
                secure,
                host,
                set_cookies,
                client: None,
                here: String::new(),
            });
        };
        if let Some(token) = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty()) {
            match auth.verify_session(token).await {
                Ok((user, claims)) => {
                    let perms = auth
                        .permissions(&Principal::User(user))
                        .await
                        .map_err(WebError::internal)?;
                    return Ok(Ctx {
                        auth_on: true,
                        viewer: Viewer::new(Some(claims.sub.clone()), perms),
                        user: Some(claims.sub),
                        csrf: claims.csrf,
                        secure,
                        host,
                        set_cookies,
                        client: None,
                        here: String::new(),
                    });
                }
                Err(crate::auth::AuthError::Catalog(e)) => return Err(WebError::internal(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "refused a web session");
                    set_cookies.push(set_cookie(SESSION_COOKIE, "", Some(0), secure));
                }
            }
        }
        let perms = auth
            .permissions(&Principal::Anonymous)
            .await
            .map_err(WebError::internal)?;
        let csrf = anonymous_csrf(headers, secure, &mut set_cookies);
        Ok(Ctx {
            auth_on: true,
            user: None,
            viewer: Viewer::new(None, perms),
            csrf,
            secure,
            host,
            set_cookies,
            client: None,
            here: String::new(),
        })
    }

    /// Refuses a POST whose form does not carry this context's CSRF token.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), WebError> {
        match sent {
            Some(s) if sane_csrf(&self.csrf) && same_token(s, &self.csrf) => Ok(()),
            _ => Err(WebError::Forbidden(
                "This form has expired or did not come from this site. Go back, reload the page and try again."
                    .into(),
            )),
        }
    }
}

/// The `wharf_csrf` cookie's token, or a new one (set on the response).
fn anonymous_csrf(headers: &HeaderMap, secure: bool, set: &mut Vec<HeaderValue>) -> String {
    if let Some(v) = cookie(headers, CSRF_COOKIE).filter(|v| sane_csrf(v)) {
        return v.to_owned();
    }
    let fresh = crate::auth::random_secret();
    set.push(set_cookie(CSRF_COOKIE, &fresh, None, secure));
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_and_bounded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wharf_session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "wharf_session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let long = format!("wharf_session={}", "x".repeat(MAX_COOKIE_HEADER));
        h.insert(header::COOKIE, HeaderValue::from_str(&long).unwrap());
        assert_eq!(cookie(&h, "wharf_session"), None);
    }

    #[test]
    fn cookie_attributes() {
        let v = set_cookie("n", "v", Some(10), true);
        assert_eq!(
            v.to_str().unwrap(),
            "n=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=10; Secure"
        );
        let v = set_cookie("n", "v", None, false);
        assert_eq!(
            v.to_str().unwrap(),
            "n=v; Path=/; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn hosts_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(host_of(&h), "localhost");
        h.insert(header::HOST, HeaderValue::from_static("reg.lan:5000"));
        assert_eq!(host_of(&h), "reg.lan:5000");
        h.insert(header::HOST, HeaderValue::from_static("evil<script>"));
        assert_eq!(host_of(&h), "localhost");
    }

    #[test]
    fn tokens_compare() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
        assert!(sane_csrf(&crate::auth::random_secret()));
        assert!(!sane_csrf("short"));
    }
}
