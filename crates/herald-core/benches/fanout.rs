//! Fan-out micro-benchmark: one publication to N local subscribers, then each writer's drain.
//!
//! The publication's frame is encoded once per format; every subscriber's drain returns a clone of
//! the same `Bytes`, so the cost per subscriber is a queue push and an `Arc`/`Bytes` refcount. The
//! "encode per subscriber" baseline shows what the fan-out avoids.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_core::SlowConsumerPolicy;
use herald_core::hub::{Hub, Subscriber};
use herald_core::outlet::{Drained, Outlet, QueueLimits};
use herald_core::publication::Publication;
use herald_proto::{Data, Format};

fn setup(n: usize) -> (Hub, Vec<Arc<Outlet>>) {
    let hub = Hub::default();
    let limits = QueueLimits {
        max_messages: 1024,
        max_bytes: 1 << 20,
    };
    let outlets: Vec<_> = (0..n).map(|_| Outlet::new(Format::Json, limits)).collect();
    for (i, o) in outlets.iter().enumerate() {
        let s = Subscriber::new(
            o.clone(),
            Arc::from(i.to_string()),
            SlowConsumerPolicy::Disconnect,
            false,
        );
        hub.add("bench", s.clone(), 0);
        s.go_live("e", || 0);
    }
    (hub, outlets)
}

fn publication(offset: u64) -> Arc<Publication> {
    let data = Data::json(
        r#"{"price":101.25,"symbol":"HRLD","seq":123456789,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
    )
    .expect("json");
    Arc::new(Publication::new(
        Arc::from("bench"),
        offset,
        Arc::from("e"),
        0,
        data,
        None,
    ))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for n in [100usize, 1000, 5000] {
        let (hub, outlets) = setup(n);
        let mut drained = Drained::default();
        g.throughput(Throughput::Elements(n as u64));
        let mut offset = 0;
        g.bench_with_input(BenchmarkId::new("shared_frame", n), &n, |b, _| {
            b.iter(|| {
                offset += 1;
                hub.fanout(&publication(offset));
                for o in &outlets {
                    drained.frames.clear();
                    o.drain(16, &mut drained);
                }
            })
        });
        g.bench_with_input(
            BenchmarkId::new("encode_per_subscriber_baseline", n),
            &n,
            |b, _| {
                b.iter(|| {
                    offset += 1;
                    for _ in 0..n {
                        let p = publication(offset);
                        std::hint::black_box(
                            herald_proto::encode(
                                Format::Json,
                                herald_proto::ServerKind::Message,
                                None,
                                &p.out(Format::Json),
                            )
                            .ok(),
                        );
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
