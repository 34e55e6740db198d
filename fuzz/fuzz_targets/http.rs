//! Request paths through the web server's router (pages, WHEP, downloads): any path is an
//! answer, never a panic, and never a file outside the downloads directory.
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use inclubit_rendezvous::web::{router, WebState};
use tower::ServiceExt;

fn main() {
    let dir = std::env::temp_dir().join(format!("inclubit-fuzz-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a downloads directory");
    std::fs::write(dir.join("inclubit-linux-x86_64"), b"binary").expect("a listed file");
    let state = Arc::new(WebState::new(None, Some(dir), 7000).expect("web state"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    afl::fuzz!(|data: &[u8]| {
        let Ok(path) = std::str::from_utf8(data) else {
            return;
        };
        for method in ["GET", "POST", "DELETE", "OPTIONS"] {
            let Ok(req) = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
            else {
                return;
            };
            let app = router(state.clone());
            let status = rt
                .block_on(app.oneshot(req))
                .map(|r| r.status())
                .expect("the router answers");
            // Only the one listed file is ever served from the downloads directory.
            if method == "GET" && status.is_success() && path.starts_with("/dl/") {
                assert!(path.contains("inclubit-linux-x86_64"), "served {path}");
            }
        }
    });
}
