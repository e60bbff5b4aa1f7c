//! One session used by several clients at once, on one node or several: what each client was
//! told (tests/shared_session.rs, and Galera in tests/galera.rs).

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::json;

use super::Client;

/// What the clients of one scenario were told, in total.
#[derive(Default)]
pub struct Tally {
    pub acknowledged: BTreeSet<String>,
    pub refused: usize,
    pub requests: usize,
}

/// `adds` distinct adds by a client holding `cookie`, sent to `nodes[i % nodes.len()]` in turn.
pub async fn adds(
    nodes: Vec<String>,
    cookie: String,
    prefix: String,
    adds: usize,
) -> (BTreeSet<String>, usize) {
    let mut client = Client::new();
    client.cookie = Some(cookie);
    let (mut acked, mut refused) = (BTreeSet::new(), 0);
    for i in 0..adds {
        let sku = format!("{prefix}-{i}");
        let base = &nodes[i % nodes.len()];
        let body = Some(json!({"sku": sku, "qty": 1}));
        match client.try_send(base, "POST", "/cart/items", body).await {
            Some((StatusCode::OK, _)) => {
                acked.insert(sku);
            }
            Some((StatusCode::CONFLICT, _)) => refused += 1,
            other => panic!("add {sku} on {base}: {other:?}"),
        }
    }
    (acked, refused)
}

/// Runs `clients` (each a list of nodes it alternates over) at once on one session.
pub async fn scenario(cookie: &str, name: &str, clients: Vec<Vec<String>>, each: usize) -> Tally {
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, nodes)| tokio::spawn(adds(nodes, cookie.to_owned(), format!("{name}{c}"), each)))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        let (acked, refused) = task.await.unwrap();
        tally.requests += each;
        tally.refused += refused;
        tally.acknowledged.extend(acked);
    }
    tally
}

/// A new session on `base` (one add), and its cookie.
pub async fn new_session(base: &str) -> String {
    let mut client = Client::new();
    let (status, _) = client
        .send(
            base,
            "POST",
            "/cart/items",
            Some(json!({"sku": "first", "qty": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    client.cookie.unwrap()
}
