//! The cursor over a scripted history: pages, trimming, epoch changes, failing reads, races.

use super::*;
use herald_proto::Data;

fn publication(epoch: &str, offset: u64) -> Arc<Publication> {
    Arc::new(Publication::new(
        Arc::from("ch"),
        offset,
        Arc::from(epoch),
        0,
        Data::json("1").expect("data"),
        None,
    ))
}

/// A channel's history: offsets `first_kept..=top` of `epoch`; `fail` reads fail first.
struct Script {
    epoch: String,
    first_kept: u64,
    top: u64,
    fail: u32,
    reads: Vec<HistoryQuery>,
}

impl Script {
    fn new(epoch: &str, first_kept: u64, top: u64) -> Script {
        Script {
            epoch: epoch.into(),
            first_kept,
            top,
            fail: 0,
            reads: Vec::new(),
        }
    }
}

impl PageReader for Script {
    fn read(
        &mut self,
        q: HistoryQuery,
    ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send {
        self.reads.push(q.clone());
        let r = if self.fail > 0 {
            self.fail -= 1;
            Err(BrokerError::Unavailable("down".into()))
        } else if q.since.as_ref().is_some_and(|s| s.epoch != self.epoch) {
            Err(BrokerError::EpochMismatch)
        } else {
            let after = q.since.as_ref().map_or(0, |s| s.offset);
            let from = (after + 1).max(self.first_kept);
            let publications = (from..=self.top)
                .take(q.limit)
                .map(|o| publication(&self.epoch, o))
                .collect();
            Ok(HistoryPage {
                publications,
                top: self.top,
                epoch: Arc::from(self.epoch.as_str()),
                first_kept: self.first_kept,
            })
        };
        std::future::ready(r)
    }
}

fn offsets(got: &[Arc<Publication>]) -> Vec<u64> {
    got.iter().map(|p| p.offset).collect()
}

#[tokio::test]
async fn a_gap_larger_than_a_page_is_filled_in_bounded_pages_in_order() {
    let mut h = Script::new("e1", 1, 2000);
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    let mut got = Vec::new();
    let fill = c
        .live(publication("e1", 1300), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::Complete));
    assert_eq!(offsets(&got), (11..=1300).collect::<Vec<_>>());
    assert!(
        h.reads.iter().all(|q| q.limit <= FILL_PAGE),
        "{:?}",
        h.reads
    );
    assert_eq!(h.reads.len(), 6, "1289 missing = 5 × 256 + 9");
    assert_eq!(c.position().1, 1300);
    // The next live one, then a duplicate (the live stream racing the fill): once each.
    got.clear();
    c.live(publication("e1", 1301), &mut h, &mut |p| got.push(p))
        .await;
    c.live(publication("e1", 1300), &mut h, &mut |p| got.push(p))
        .await;
    c.live(publication("e1", 1301), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(offsets(&got), vec![1301]);
    assert_eq!(h.reads.len(), 6, "no read without a gap");
}

#[tokio::test]
async fn a_trimmed_gap_delivers_what_is_kept_and_says_how_much_was_lost() {
    let mut h = Script::new("e1", 40, 100);
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    let mut got = Vec::new();
    let fill = c
        .live(publication("e1", 60), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::Trimmed { lost: 29 }), "11..=39 are gone");
    assert_eq!(offsets(&got), (40..=60).collect::<Vec<_>>());
    // History disabled (nothing kept): the live publication still goes out, with its skip.
    let mut h = Script::new("e1", 101, 100);
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    got.clear();
    let fill = c
        .live(publication("e1", 15), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::Trimmed { lost: 4 }));
    assert_eq!(offsets(&got), vec![15]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_read_is_retried_then_the_gap_is_reported_not_hidden() {
    let mut h = Script::new("e1", 1, 100);
    h.fail = 2;
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    let mut got = Vec::new();
    let fill = c
        .live(publication("e1", 20), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(
        fill,
        Some(Fill::Complete),
        "two failures, then the read works"
    );
    assert_eq!(offsets(&got), (11..=20).collect::<Vec<_>>());
    h.fail = 10;
    got.clear();
    let fill = c
        .live(publication("e1", 30), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::Failed));
    // Delivered with its offset: subscribers see 20 → 30 and report the gap themselves.
    assert_eq!(offsets(&got), vec![30]);
    assert_eq!(c.position().1, 30);
}

#[tokio::test]
async fn an_epoch_change_during_a_gap_and_on_the_live_stream() {
    // The stream was reset under the gap: the fill stops, the live one is still delivered.
    let mut h = Script::new("e2", 1, 5);
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    let mut got = Vec::new();
    let fill = c
        .live(publication("e1", 20), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::EpochChanged));
    assert_eq!(offsets(&got), vec![20]);
    // A live publication of the new epoch restarts the cursor there, without reading.
    got.clear();
    let reads = h.reads.len();
    let fill = c
        .live(publication("e2", 6), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::EpochChanged));
    assert_eq!((&**c.position().0, c.position().1), ("e2", 6));
    assert_eq!(h.reads.len(), reads);
    assert_eq!(offsets(&got), vec![6]);
}

#[tokio::test]
async fn catch_up_reads_to_the_end_and_moves_to_a_new_epoch() {
    let mut h = Script::new("e1", 1, 1234);
    let mut c = ChannelCursor::new(Arc::from("e1"), 0);
    let mut got = Vec::new();
    assert_eq!(
        c.catch_up(&mut h, &mut |p| got.push(p)).await,
        Fill::Complete
    );
    assert_eq!(offsets(&got), (1..=1234).collect::<Vec<_>>());
    // Up to date: one read, nothing delivered.
    got.clear();
    assert_eq!(
        c.catch_up(&mut h, &mut |p| got.push(p)).await,
        Fill::Complete
    );
    assert!(got.is_empty());
    // The engine was flushed: the cursor moves to the new stream's top.
    let mut h = Script::new("e9", 1, 3);
    assert_eq!(
        c.catch_up(&mut h, &mut |p| got.push(p)).await,
        Fill::EpochChanged
    );
    assert_eq!((&**c.position().0, c.position().1), ("e9", 3));
    assert!(got.is_empty());
}

#[tokio::test]
async fn losses_add_up_across_pages_and_a_page_past_the_gap_is_a_trim() {
    // History keeps 1..=100 and then (a hole) 400..=1000: the hole is found on the second page.
    struct Holey(Script);
    impl PageReader for Holey {
        fn read(
            &mut self,
            q: HistoryQuery,
        ) -> impl Future<Output = Result<HistoryPage, BrokerError>> + Send {
            let after = q.since.as_ref().map_or(0, |s| s.offset);
            let kept = (after + 1..=1000).filter(|o| *o <= 100 || *o >= 400);
            let publications = kept.take(q.limit).map(|o| publication("e1", o)).collect();
            self.0.reads.push(q);
            std::future::ready(Ok(HistoryPage {
                publications,
                top: 1000,
                epoch: Arc::from("e1"),
                first_kept: 1,
            }))
        }
    }
    let mut h = Holey(Script::new("e1", 1, 1000));
    let mut c = ChannelCursor::new(Arc::from("e1"), 0);
    let mut got = Vec::new();
    let fill = c.catch_up(&mut h, &mut |p| got.push(p)).await;
    assert_eq!(fill, Fill::Trimmed { lost: 299 }, "101..=399");
    assert_eq!(got.len(), 100 + 601);
    // The next page starts past the live publication: everything up to it is gone.
    let mut h = Script::new("e1", 500, 600);
    let mut c = ChannelCursor::new(Arc::from("e1"), 10);
    got.clear();
    let fill = c
        .live(publication("e1", 450), &mut h, &mut |p| got.push(p))
        .await;
    assert_eq!(fill, Some(Fill::Trimmed { lost: 439 }), "11..=449");
    assert_eq!(offsets(&got), vec![450]);
}
