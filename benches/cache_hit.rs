//! Micro-benchmark of the sticky read path: `GET /cart` of the demo storefront with a session
//! this node holds (a cache hit), through the layer, without HTTP. The baseline is the same
//! route answering the same JSON without a session layer, measured in the same run.
//!
//! `cargo bench --bench cache_hit`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, header};
use http_body_util::BodyExt;
use session_failover::server::storefront::{self, CartItem, CartView};
use session_failover::store::MemoryStore;
use session_failover::{SaveMode, SessionFailoverLayer};
use tower::ServiceExt;

fn cookie_of(router: &axum::Router, runtime: &tokio::runtime::Runtime) -> String {
    runtime.block_on(async {
        let response = router
            .clone()
            .oneshot(
                Request::post("/cart/items")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(r#"{"sku":"SKU-100000-BLUE-M","qty":1}"#))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(response.status().is_success());
        let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
        cookie.split(';').next().unwrap().to_owned()
    })
}

async fn get_cart(router: &axum::Router, cookie: &str) -> usize {
    let response = router
        .clone()
        .oneshot(
            Request::get("/cart")
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(response.status().is_success());
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("GET /cart");

    // The same answer without a session: the ceiling.
    let baseline = axum::Router::new().route(
        "/cart",
        get(|| async {
            Json(CartView {
                user: None,
                items: vec![CartItem {
                    sku: "SKU-100000-BLUE-M".to_owned(),
                    qty: 1,
                }],
                count: 1,
            })
        }),
    );
    group.bench_function("no session layer", |b| {
        b.to_async(&runtime).iter(|| get_cart(&baseline, ""));
    });

    let memory_only = storefront::router().layer(SessionFailoverLayer::new("storefront"));
    let cookie = cookie_of(&memory_only, &runtime);
    group.bench_function("cache hit, memory-only", |b| {
        b.to_async(&runtime)
            .iter(|| get_cart(&memory_only, &cookie));
    });

    let persisted = runtime.block_on(async {
        storefront::router().layer(
            SessionFailoverLayer::new("storefront")
                .with_store(Arc::new(MemoryStore::new()), SaveMode::Sync),
        )
    });
    let cookie = cookie_of(&persisted, &runtime);
    group.bench_function("cache hit, sync mode", |b| {
        b.to_async(&runtime).iter(|| get_cart(&persisted, &cookie));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
