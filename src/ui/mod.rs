//! The web UI: a page of plain HTML, CSS and JavaScript embedded in the binary at build time,
//! served at `/ui/`. It reads the same HTTP API any client does (blocking queries keep every
//! page live), so the UI holds no state and needs no build step beyond `cargo build`.
//!
//! Architecture Invariant: nothing the UI shows is computed here; pages are static files and
//! the data comes from `/v1/` endpoints. Why: what an operator sees in the browser is then
//! exactly what scripts and DNS see.
//!
//! Every response carries a Content-Security-Policy that allows only this origin, so the page
//! can fetch nothing from elsewhere (no CDN, no fonts, no trackers) even by mistake.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// A file the UI is made of, embedded at build time.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset =
    Asset { name: "index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("index.html") };

const ASSETS: [Asset; 3] = [
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("app.js") },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_bytes!("app.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_bytes!("favicon.svg") },
];

/// Allows this origin only: scripts, styles, images and API calls.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What `/` answers when the UI is off (Consul answers the same way, with its own name).
const UI_OFF: &str = "cairn agent: the web UI is off. To turn it on, set ui_config.enabled = true in the \
     agent configuration (or pass -ui) and restart.\n";

/// FNV-1a over `bytes`, at compile time: a validator that changes whenever a file does.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The routes of the UI (`/`, `/ui/...`); with the UI off only `/`, which says how to turn
/// it on. `datacenter` is where `/ui/` sends the browser first.
pub fn routes(enabled: bool, datacenter: &str) -> Router {
    if !enabled {
        return Router::new().route("/", get(|| async { UI_OFF }));
    }
    let start = format!("/ui/{datacenter}/services");
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(move || async move { Redirect::temporary(&start) }))
        .route("/ui/assets/{file}", get(asset))
        // Every other path under /ui/ is a page of the app, which routes in the browser.
        .route("/ui/{*page}", get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }))
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => serve(asset, &headers),
        None => (StatusCode::NOT_FOUND, format!("no UI file named {file:?}\n")).into_response(),
    }
}

/// `asset`, or 304 when the browser's copy (`If-None-Match`) is current. Browsers revalidate
/// every time (`no-cache`), so a new binary's UI is seen on the next load.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.body));
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_changes_with_the_content() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn revalidation_answers_304_without_a_body() {
        let first = serve(&ASSETS[0], &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers().get(header::ETAG).expect("etag").clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        let second = serve(&ASSETS[0], &again);
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert!(second.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn every_page_names_only_embedded_files() {
        let index = std::str::from_utf8(INDEX.body).expect("utf-8");
        for reference in index.split("/ui/assets/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(ASSETS.iter().any(|a| a.name == name), "index.html names {name:?}, which is not embedded");
        }
    }
}
