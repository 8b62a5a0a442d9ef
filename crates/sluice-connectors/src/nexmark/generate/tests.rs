use ::nexmark::config::NexmarkConfig;
use ::nexmark::event::{Event, EventType};
use ::nexmark::EventGenerator;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

use super::*;

fn crate_events(kind: Kind, rate: u64, offset: u64, step: u64, n: usize) -> Vec<Event> {
    let config = NexmarkConfig {
        base_time: DEFAULT_BASE_TIME_MS,
        first_rate: rate as usize,
        next_rate: rate as usize,
        ..NexmarkConfig::default()
    };
    let filter = match kind {
        Kind::Person => EventType::Person,
        Kind::Auction => EventType::Auction,
        Kind::Bid => EventType::Bid,
    };
    EventGenerator::new(config)
        .with_type_filter(filter)
        .with_offset(offset)
        .with_step(step)
        .take(n)
        .collect()
}

fn all(kind: Kind) -> Vec<String> {
    kind.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

fn int(batch: &RecordBatch, name: &str, row: usize) -> usize {
    let c = batch.column_by_name(name).expect("column");
    c.as_primitive::<Int64Type>().value(row) as usize
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> String {
    let c = batch.column_by_name(name).expect("column");
    c.as_string::<i32>().value(row).to_owned()
}

fn millis(batch: &RecordBatch, name: &str, row: usize) -> u64 {
    let c = batch.column_by_name(name).expect("column");
    (c.as_primitive::<TimestampMicrosecondType>().value(row) / 1000) as u64
}

/// Checks `batch` row by row against the crate's events.
fn same(batch: &RecordBatch, events: &[Event]) {
    assert_eq!(batch.num_rows(), events.len());
    for (r, event) in events.iter().enumerate() {
        match event {
            Event::Person(p) => {
                assert_eq!(int(batch, "id", r), p.id);
                assert_eq!(text(batch, "name", r), p.name);
                assert_eq!(text(batch, "email_address", r), p.email_address);
                assert_eq!(text(batch, "credit_card", r), p.credit_card);
                assert_eq!(text(batch, "city", r), p.city);
                assert_eq!(text(batch, "state", r), p.state);
                assert_eq!(millis(batch, "date_time", r), p.date_time);
                assert_eq!(text(batch, "extra", r), p.extra);
            }
            Event::Auction(a) => {
                assert_eq!(int(batch, "id", r), a.id);
                assert_eq!(text(batch, "item_name", r), a.item_name);
                assert_eq!(text(batch, "description", r), a.description);
                assert_eq!(int(batch, "initial_bid", r), a.initial_bid);
                assert_eq!(int(batch, "reserve", r), a.reserve);
                assert_eq!(millis(batch, "date_time", r), a.date_time);
                assert_eq!(millis(batch, "expires", r), a.expires);
                assert_eq!(int(batch, "seller", r), a.seller);
                assert_eq!(int(batch, "category", r), a.category);
                assert_eq!(text(batch, "extra", r), a.extra);
            }
            Event::Bid(b) => {
                assert_eq!(int(batch, "auction", r), b.auction, "row {r}");
                assert_eq!(int(batch, "bidder", r), b.bidder);
                assert_eq!(int(batch, "price", r), b.price);
                assert_eq!(text(batch, "channel", r), b.channel);
                assert_eq!(text(batch, "url", r), b.url);
                assert_eq!(millis(batch, "date_time", r), b.date_time);
                assert_eq!(text(batch, "extra", r), b.extra);
            }
        }
    }
}

#[test]
fn the_events_are_the_nexmark_crates() {
    for kind in [Kind::Person, Kind::Auction, Kind::Bid] {
        let names = all(kind);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for rate in [10_000, 10_000_000] {
            let g = Generator::new(kind, Timing::new(rate, DEFAULT_BASE_TIME_MS), &names);
            same(
                &g.batch(0, 1, 3000).expect("batch"),
                &crate_events(kind, rate, 0, 1, 3000),
            );
            // A split: every third event from the second.
            same(
                &g.batch(1, 3, 500).expect("batch"),
                &crate_events(kind, rate, 1, 3, 500),
            );
            // Far on, where f32 times lose precision.
            same(
                &g.batch(9_000_000, 7, 200).expect("batch"),
                &crate_events(kind, rate, 9_000_000, 7, 200),
            );
        }
    }
}

#[test]
fn the_first_person_is_the_crates_example() {
    let g = Generator::new(
        Kind::Person,
        Timing::new(10_000, DEFAULT_BASE_TIME_MS),
        &["id", "name", "city", "date_time"],
    );
    let b = g.batch(0, 1, 1).expect("batch");
    assert_eq!(b.num_columns(), 4);
    assert_eq!(int(&b, "id", 0), 1000);
    assert_eq!(text(&b, "name", 0), "vicky noris");
    assert_eq!(text(&b, "city", 0), "cheyenne");
    assert_eq!(millis(&b, "date_time", 0), DEFAULT_BASE_TIME_MS);
}

#[test]
fn some_columns_only_and_no_rows() {
    let g = Generator::new(
        Kind::Bid,
        Timing::new(1000, DEFAULT_BASE_TIME_MS),
        &["price", "auction"],
    );
    let b = g.batch(5, 1, 10).expect("batch");
    assert_eq!(b.schema().field(0).name(), "auction");
    assert_eq!(b.schema().field(1).name(), "price");
    let full = Generator::new(
        Kind::Bid,
        Timing::new(1000, DEFAULT_BASE_TIME_MS),
        &[
            "auction",
            "bidder",
            "price",
            "channel",
            "url",
            "date_time",
            "extra",
        ],
    )
    .batch(5, 1, 10)
    .expect("batch");
    for r in 0..10 {
        assert_eq!(int(&b, "price", r), int(&full, "price", r));
        assert_eq!(int(&b, "auction", r), int(&full, "auction", r));
    }
    let empty = g.batch(0, 1, 0).expect("batch");
    assert_eq!((empty.num_rows(), empty.num_columns()), (0, 2));
    assert!(empty.column(0).is_empty());
}

#[test]
fn counts_and_event_numbers_follow_the_proportions() {
    assert_eq!(Kind::Person.event_number(0), 0);
    assert_eq!(Kind::Person.event_number(2), 100);
    assert_eq!(Kind::Auction.event_number(3), 51);
    assert_eq!(Kind::Bid.event_number(0), 4);
    assert_eq!(Kind::Bid.event_number(46), 54);
    for events in [0u64, 1, 3, 4, 5, 49, 50, 51, 999, 1000, 12_345] {
        let mut n = [0u64; 3];
        for e in 0..events {
            n[match e % 50 {
                0 => 0,
                1..=3 => 1,
                _ => 2,
            }] += 1;
        }
        assert_eq!(Kind::Person.count_below(events), n[0], "{events}");
        assert_eq!(Kind::Auction.count_below(events), n[1], "{events}");
        assert_eq!(Kind::Bid.count_below(events), n[2], "{events}");
    }
}
