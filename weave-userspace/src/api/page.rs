//! `GET /`: the live topology page. Plain HTML, CSS and JavaScript compiled into the binary
//! (no CDN, no framework: it works offline); the script polls `GET /report` every 2 s and
//! draws peers, connections, traffic and containers from it (`page/topology.js`).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/topology.js");
const STYLE: &str = include_str!("page/topology.css");

/// Served text of a type, never cached (a new router version brings a new page).
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads nothing from elsewhere and writes no markup from data.
    #[test]
    fn the_page_is_self_contained_and_writes_text_only() {
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") || text.contains("http://www.w3.org/2000/svg"));
            assert!(
                !text.contains("https://"),
                "an outside resource in the page"
            );
        }
        for markup_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(
                !SCRIPT.contains(markup_sink),
                "{markup_sink} in topology.js"
            );
        }
        assert!(INDEX.contains("topology.js") && INDEX.contains("topology.css"));
    }
}
