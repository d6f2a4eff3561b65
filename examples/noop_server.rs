//! A no-op axum server: the baseline the predict load test compares with.
//! It reads the request body and answers a fixed small JSON, on the same
//! tokio runtime and axum version as eddy, so the difference is eddy's own
//! work (parsing, hashing, predicting, middleware, the join cache).
//!
//! Run: `cargo run --release --example noop_server -- 127.0.0.1:18182`.

use axum::Router;

/// The same allocator as eddy, so the comparison measures request work only.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18182".into());
    let app = Router::new().route(
        "/noop",
        post(|body: Bytes| async move {
            std::hint::black_box(body);
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"ok":true}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("noop listening on {addr}");
    axum::serve(listener, app).await
}
