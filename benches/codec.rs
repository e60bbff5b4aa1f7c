//! Micro-benchmarks of the session codec: encode and decode of the demo storefront's cart
//! session, plain, compressed, and compressed and encrypted.
//!
//! `cargo bench --bench codec`. The 1-line cart stays under the compression threshold; the
//! 20-line cart (the "≤ 1 KB" case) is compressed.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use session_failover::codec::{Binding, Codec, EncodedAttributes, Keys, encode_value};
use session_failover::server::storefront::{Cart, CartItem};
use session_failover::session::SessionId;

const SECRET: &str = "bench-secret-bench-secret-bench-secret-bench-secret-bench-secret-";

fn cart(lines: usize) -> EncodedAttributes {
    let cart = Cart {
        items: (0..lines)
            .map(|i| CartItem {
                sku: format!("SKU-{:06}-BLUE-M", 100_000 + i),
                qty: 1 + u32::try_from(i % 7).unwrap(),
            })
            .collect(),
    };
    BTreeMap::from([("cart".to_owned(), encode_value(&cart).unwrap())])
}

fn codecs() -> [(&'static str, Codec); 3] {
    [
        // A threshold above any body here: never compressed.
        (
            "plain",
            Codec::default().with_compress_threshold(usize::MAX),
        ),
        ("compressed", Codec::default()),
        (
            "compressed+encrypted",
            Codec::default().with_keys(Keys::new(SECRET, &[]).unwrap()),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let key = SessionId::generate().store_key();
    let binding = Binding {
        app: "storefront",
        key: &key,
        principal: Some("zoë"),
    };
    for lines in [1, 20] {
        let attributes = cart(lines);
        let mut encode = c.benchmark_group(format!("encode/{lines}-line cart"));
        for (name, codec) in codecs() {
            let blob = codec.encode(&attributes, binding).unwrap();
            encode.throughput(Throughput::Bytes(blob.len() as u64));
            encode.bench_with_input(
                BenchmarkId::new(name, format!("{} B stored", blob.len())),
                &attributes,
                |b, attributes| b.iter(|| codec.encode(black_box(attributes), binding).unwrap()),
            );
        }
        encode.finish();
        let mut decode = c.benchmark_group(format!("decode/{lines}-line cart"));
        for (name, codec) in codecs() {
            let blob = codec.encode(&attributes, binding).unwrap();
            decode.throughput(Throughput::Bytes(blob.len() as u64));
            decode.bench_with_input(
                BenchmarkId::new(name, format!("{} B stored", blob.len())),
                &blob,
                |b, blob| b.iter(|| codec.decode(black_box(blob), binding).unwrap()),
            );
        }
        decode.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
