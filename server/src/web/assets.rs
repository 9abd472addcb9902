//! The UI's static files, compiled into the binary (no CDN, works offline on
//! a LAN): one stylesheet, one small script, the SVG logo (also the
//! favicon).
//!
//! URLs carry a hash of all the assets (`/static/<hash>/app.css`), so they
//! are served with a year-long `immutable` cache and a new build's assets
//! get new URLs. A URL with another hash is a 404. A leaf.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::Digest as _;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("static/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("static/app.js"),
    },
    Asset {
        name: "logo.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("static/logo.svg"),
    },
];

/// The first 12 hex digits of the SHA-256 of every asset, in order.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = sha2::Sha256::new();
    for a in ASSETS {
        h.update(a.name.as_bytes());
        h.update((a.bytes.len() as u64).to_le_bytes());
        h.update(a.bytes);
    }
    hex::encode(&h.finalize()[..6])
});

/// The URL of an asset (`name` one of `app.css`, `app.js`, `logo.svg`).
pub fn url(name: &str) -> String {
    format!("/static/{}/{name}", *VERSION)
}

/// `GET /static/{version}/{name}`.
pub async fn serve(Path((version, name)): Path<(String, String)>) -> Response {
    let found = ASSETS.iter().find(|a| a.name == name);
    match found {
        Some(a) if version == *VERSION => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            a.bytes,
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            "not found",
        )
            .into_response(),
    }
}

/// `GET /favicon.ico`: browsers ask for it by that name; the SVG logo is
/// also linked as the icon of every page.
pub async fn favicon() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("image/svg+xml"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        include_bytes!("static/logo.svg").as_slice(),
    )
        .into_response()
}
