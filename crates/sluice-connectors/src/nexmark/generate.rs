//! The Nexmark event generator, columnar.
//!
//! It produces exactly the events of the `nexmark` crate (0.2, RisingWave's
//! generator, itself a port of the Beam/Flink one): event `n`'s content
//! depends only on `n`, drawn from a `SmallRng` seeded with `n`, with the
//! same draws in the same order. But it writes each value straight into
//! Arrow builders: no `Event` structs, no `String` per field, and strings
//! of columns nobody declared are drawn but not copied. The unit tests
//! compare it with the crate, event by event.
//!
//! Event numbers: `n % 50` is 0 for a person, 1-3 for an auction, else a
//! bid. Ids start at 1000. Event time is `base_time` plus `n / event_rate`
//! seconds, rounded to the millisecond, computed in `f32` as the crate does.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Events per proportion cycle, and how many of each kind.
const PROPORTION_DENOMINATOR: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const BID_PROPORTION: u64 = 46;

const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: usize = 5;
const ACTIVE_PEOPLE: usize = 1000;
const IN_FLIGHT_AUCTIONS: usize = 100;
const PERSON_ID_LEAD: usize = 10;
const AUCTION_ID_LEAD: usize = 10;
const HOT_SELLER_RATIO: usize = 4;
const HOT_AUCTION_RATIO: usize = 2;
const HOT_BIDDER_RATIO: usize = 4;
const HOT_CHANNEL_RATIO: usize = 2;
/// Hot sellers, auctions and bidders are the first of each block of 100.
const HOT_BLOCK: u64 = 100;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
const CHANNELS: usize = 10_000;

const US_STATES: &[&str] = &["az", "ca", "id", "or", "wa", "wy"];
const US_CITIES: &[&str] = &[
    "phoenix",
    "los angeles",
    "san francisco",
    "boise",
    "portland",
    "bend",
    "redmond",
    "seattle",
    "kent",
    "cheyenne",
];
const FIRST_NAMES: &[&str] = &[
    "peter", "paul", "luke", "john", "saul", "vicky", "kate", "julie", "sarah", "deiter", "walter",
];
const LAST_NAMES: &[&str] = &[
    "shultz", "abrams", "spencer", "white", "bartels", "walton", "smith", "jones", "noris",
];
const HOT_CHANNELS: &[&str] = &["Google", "Facebook", "Baidu", "Apple"];

/// 2015-07-15 00:00:00 UTC, in milliseconds: the default first event time.
pub const DEFAULT_BASE_TIME_MS: u64 = 1_436_918_400_000;

/// The three kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Person,
    Auction,
    Bid,
}

impl Kind {
    /// `person`, `auction` or `bid`.
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "person" => Some(Kind::Person),
            "auction" => Some(Kind::Auction),
            "bid" => Some(Kind::Bid),
            _ => None,
        }
    }

    /// The name used in options and errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Person => "person",
            Kind::Auction => "auction",
            Kind::Bid => "bid",
        }
    }

    /// Every column of this kind, in the standard order.
    pub fn schema(self) -> SchemaRef {
        let int = |n: &str| Field::new(n, DataType::Int64, true);
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        let time = |n: &str| Field::new(n, DataType::Timestamp(TimeUnit::Microsecond, None), true);
        Arc::new(Schema::new(match self {
            Kind::Person => vec![
                int("id"),
                text("name"),
                text("email_address"),
                text("credit_card"),
                text("city"),
                text("state"),
                time("date_time"),
                text("extra"),
            ],
            Kind::Auction => vec![
                int("id"),
                text("item_name"),
                text("description"),
                int("initial_bid"),
                int("reserve"),
                time("date_time"),
                time("expires"),
                int("seller"),
                int("category"),
                text("extra"),
            ],
            Kind::Bid => vec![
                int("auction"),
                int("bidder"),
                int("price"),
                text("channel"),
                text("url"),
                time("date_time"),
                text("extra"),
            ],
        }))
    }

    /// How many of each 50 events are of this kind.
    fn proportion(self) -> u64 {
        match self {
            Kind::Person => PERSON_PROPORTION,
            Kind::Auction => AUCTION_PROPORTION,
            Kind::Bid => BID_PROPORTION,
        }
    }

    /// Where this kind's events start in each cycle of 50.
    fn first_in_cycle(self) -> u64 {
        match self {
            Kind::Person => 0,
            Kind::Auction => PERSON_PROPORTION,
            Kind::Bid => PERSON_PROPORTION + AUCTION_PROPORTION,
        }
    }

    /// The event number of this kind's `i`-th event.
    pub fn event_number(self, i: u64) -> u64 {
        let p = self.proportion();
        i / p * PROPORTION_DENOMINATOR + self.first_in_cycle() + i % p
    }

    /// How many of the first `events` events are of this kind.
    pub fn count_below(self, events: u64) -> u64 {
        let cycles = events / PROPORTION_DENOMINATOR;
        let rest = events % PROPORTION_DENOMINATOR;
        cycles * self.proportion()
            + rest
                .saturating_sub(self.first_in_cycle())
                .min(self.proportion())
    }
}

/// What fixes the events: the rate of event time and the first event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Microseconds of event time between two events, as the crate computes
    /// it (`f32`).
    delay_us: f32,
    /// The first event's time, in milliseconds since the epoch.
    base_time_ms: u64,
}

impl Timing {
    /// `event_rate` events per second of event time from `base_time_ms`.
    pub fn new(event_rate: u64, base_time_ms: u64) -> Self {
        Timing {
            delay_us: 1_000_000f32 / event_rate as f32,
            base_time_ms,
        }
    }

    /// Event `n`'s time in milliseconds.
    fn millis(&self, n: u64) -> u64 {
        self.base_time_ms + ((n as f32 * self.delay_us) / 1000.0).round() as u64
    }
}

/// The id (base 0) of the newest person at `event`: one person per cycle of
/// 50 events (the crate's formula, with its offset always 0 for one person
/// per cycle).
fn person_last_id(event: u64) -> u64 {
    event / PROPORTION_DENOMINATOR * PERSON_PROPORTION
}

fn person_next_id(event: u64, rng: &mut SmallRng) -> u64 {
    let people = person_last_id(event) as usize + 1;
    let active = people.min(ACTIVE_PEOPLE);
    (people - active + rng.gen_range(0..active + PERSON_ID_LEAD)) as u64
}

fn auction_last_id(event: u64) -> u64 {
    let mut epoch = event / PROPORTION_DENOMINATOR;
    let mut offset = event % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // The crate underflows here for event 0; no auction or bid is event 0.
        epoch = epoch.saturating_sub(1);
        offset = AUCTION_PROPORTION - 1;
    } else if PERSON_PROPORTION + AUCTION_PROPORTION <= offset {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn auction_next_id(event: u64, rng: &mut SmallRng) -> u64 {
    let max = auction_last_id(event) as usize;
    let min = max.saturating_sub(IN_FLIGHT_AUCTIONS);
    (min + rng.gen_range(0..max - min + 1 + AUCTION_ID_LEAD)) as u64
}

fn letter(rng: &mut SmallRng) -> char {
    rng.gen_range(b'a'..=b'z') as char
}

/// Appends `n` random lower-case letters to `out`.
fn letters(rng: &mut SmallRng, n: usize, out: &mut String) {
    for _ in 0..n {
        out.push(letter(rng));
    }
}

/// Appends the crate's "extra" padding to `out`.
fn extra(rng: &mut SmallRng, current: usize, average: usize, out: &mut String) {
    if current > average {
        return;
    }
    let wanted = average - current;
    let delta = (wanted + 2) / 5;
    let size = wanted - delta
        + if delta == 0 {
            0
        } else {
            rng.gen_range(0..2 * delta)
        };
    letters(rng, size, out);
}

fn price(rng: &mut SmallRng) -> i64 {
    (10.0_f32.powf(rng.gen::<f32>() * 6.0) * 100.0).round() as i64
}

fn base_url(seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let part = |rng: &mut SmallRng| -> String {
        let len = rng.gen_range(3..5usize);
        (0..len)
            .map(|_| {
                if rng.gen_range(0..13) == 0 {
                    '_'
                } else {
                    letter(rng)
                }
            })
            .collect()
    };
    let (a, b, c) = (part(&mut rng), part(&mut rng), part(&mut rng));
    format!("https://www.nexmark.com/{a}/{b}/{c}/item.htm?query=1")
}

/// The 10,000 (channel, url) pairs of the crate, and the four hot urls.
struct Channels {
    all: Vec<(String, String)>,
    hot_urls: Vec<String>,
}

fn channels() -> &'static Channels {
    static CHANNELS_TABLE: OnceLock<Channels> = OnceLock::new();
    CHANNELS_TABLE.get_or_init(|| Channels {
        all: (0..CHANNELS)
            .map(|i| {
                let mut url = base_url(i as u64);
                let mut rng = SmallRng::seed_from_u64(i as u64);
                if rng.gen_range(0..10) > 0 {
                    url.push_str("&channel_id=");
                    url.push_str(&i64::abs((i as i32).reverse_bits() as i64).to_string());
                }
                (format!("channel-{i}"), url)
            })
            .collect(),
        hot_urls: (0..HOT_CHANNELS.len() as u64).map(base_url).collect(),
    })
}

/// Builders for the declared columns; `None` for the others, whose values
/// are drawn (to keep the random sequence) but not stored.
struct Columns {
    kind: Kind,
    ints: Vec<Option<Int64Builder>>,
    texts: Vec<Option<StringBuilder>>,
    times: Vec<Option<TimestampMicrosecondBuilder>>,
    /// Scratch space for one string value.
    scratch: String,
}

/// Which builder of `Columns` each column of a kind uses.
#[derive(Clone, Copy)]
enum Slot {
    Int(usize),
    Text(usize),
    Time(usize),
}

fn slots(kind: Kind) -> &'static [Slot] {
    use Slot::{Int, Text, Time};
    match kind {
        // id, name, email_address, credit_card, city, state, date_time, extra
        Kind::Person => &[
            Int(0),
            Text(0),
            Text(1),
            Text(2),
            Text(3),
            Text(4),
            Time(0),
            Text(5),
        ],
        // id, item_name, description, initial_bid, reserve, date_time,
        // expires, seller, category, extra
        Kind::Auction => &[
            Int(0),
            Text(0),
            Text(1),
            Int(1),
            Int(2),
            Time(0),
            Time(1),
            Int(3),
            Int(4),
            Text(2),
        ],
        // auction, bidder, price, channel, url, date_time, extra
        Kind::Bid => &[Int(0), Int(1), Int(2), Text(0), Text(1), Time(0), Text(2)],
    }
}

impl Columns {
    fn new(kind: Kind, wanted: &[bool], capacity: usize) -> Self {
        let mut ints = Vec::new();
        let mut texts = Vec::new();
        let mut times = Vec::new();
        for (slot, &want) in slots(kind).iter().zip(wanted) {
            match slot {
                Slot::Int(_) => ints.push(want.then(|| Int64Builder::with_capacity(capacity))),
                Slot::Text(_) => {
                    texts.push(want.then(|| StringBuilder::with_capacity(capacity, capacity * 16)))
                }
                Slot::Time(_) => {
                    times.push(want.then(|| TimestampMicrosecondBuilder::with_capacity(capacity)))
                }
            }
        }
        Columns {
            kind,
            ints,
            texts,
            times,
            scratch: String::with_capacity(512),
        }
    }

    fn int(&mut self, i: usize, v: i64) {
        if let Some(b) = &mut self.ints[i] {
            b.append_value(v);
        }
    }

    fn time_ms(&mut self, i: usize, ms: u64) {
        if let Some(b) = &mut self.times[i] {
            b.append_value(ms as i64 * 1000);
        }
    }

    fn text(&mut self, i: usize, v: &str) {
        if let Some(b) = &mut self.texts[i] {
            b.append_value(v);
        }
    }

    fn wants_text(&self, i: usize) -> bool {
        self.texts[i].is_some()
    }

    /// Stores the scratch string in text column `i`, and clears it.
    fn take_scratch(&mut self, i: usize) {
        if let Some(b) = &mut self.texts[i] {
            b.append_value(&self.scratch);
        }
        self.scratch.clear();
    }

    fn finish(mut self, wanted: &[bool]) -> Vec<ArrayRef> {
        let mut out: Vec<ArrayRef> = Vec::new();
        for (slot, &want) in slots(self.kind).iter().zip(wanted) {
            if !want {
                continue;
            }
            match *slot {
                Slot::Int(i) => {
                    if let Some(b) = &mut self.ints[i] {
                        out.push(Arc::new(b.finish()));
                    }
                }
                Slot::Text(i) => {
                    if let Some(b) = &mut self.texts[i] {
                        out.push(Arc::new(b.finish()));
                    }
                }
                Slot::Time(i) => {
                    if let Some(b) = &mut self.times[i] {
                        out.push(Arc::new(b.finish()));
                    }
                }
            }
        }
        out
    }
}

/// Generates one kind's events, or some of its columns, as Arrow batches.
#[derive(Debug, Clone)]
pub struct Generator {
    kind: Kind,
    timing: Timing,
    /// Which of the kind's columns to produce.
    wanted: Vec<bool>,
    schema: SchemaRef,
}

impl Generator {
    /// Generates the columns of `kind` named in `columns` (in the kind's
    /// standard order; unknown names are ignored: check them first).
    pub fn new(kind: Kind, timing: Timing, columns: &[&str]) -> Self {
        let all = kind.schema();
        let wanted: Vec<bool> = all
            .fields()
            .iter()
            .map(|f| columns.contains(&f.name().as_str()))
            .collect();
        let fields: Vec<Field> = all
            .fields()
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(f, _)| f.as_ref().clone())
            .collect();
        Generator {
            kind,
            timing,
            wanted,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    /// The columns produced, in the kind's standard order.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// This kind's events `first`, `first + step`, ... (`count` of them),
    /// by their index among the events of the kind.
    pub fn batch(&self, first: u64, step: u64, count: usize) -> Result<RecordBatch, ArrowError> {
        let mut c = Columns::new(self.kind, &self.wanted, count);
        for k in 0..count as u64 {
            let n = self.kind.event_number(first + k * step);
            match self.kind {
                Kind::Person => self.person(n, &mut c),
                Kind::Auction => self.auction(n, &mut c),
                Kind::Bid => self.bid(n, &mut c),
            }
        }
        let columns = c.finish(&self.wanted);
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(count));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
    }

    fn person(&self, n: u64, c: &mut Columns) {
        let rng = &mut SmallRng::seed_from_u64(n);
        c.int(0, (person_last_id(n) + FIRST_PERSON_ID) as i64);
        let first = FIRST_NAMES.choose(rng).copied().unwrap_or_default();
        let last = LAST_NAMES.choose(rng).copied().unwrap_or_default();
        let mut size = 8 + first.len() + 1 + last.len();
        c.scratch.push_str(first);
        c.scratch.push(' ');
        c.scratch.push_str(last);
        c.take_scratch(0);
        letters(rng, 7, &mut c.scratch);
        c.scratch.push('@');
        letters(rng, 5, &mut c.scratch);
        c.scratch.push_str(".com");
        size += c.scratch.len();
        c.take_scratch(1);
        let digits: [i32; 4] = std::array::from_fn(|_| rng.gen_range(0..10000));
        if c.wants_text(2) {
            use std::fmt::Write as _;
            let _ = write!(
                c.scratch,
                "{:04} {:04} {:04} {:04}",
                digits[0], digits[1], digits[2], digits[3]
            );
        }
        size += 19;
        c.take_scratch(2);
        let city = US_CITIES.choose(rng).copied().unwrap_or_default();
        let state = US_STATES.choose(rng).copied().unwrap_or_default();
        size += city.len() + state.len();
        c.text(3, city);
        c.text(4, state);
        c.time_ms(0, self.timing.millis(n));
        extra(rng, size, AVG_PERSON_BYTES, &mut c.scratch);
        c.take_scratch(5);
    }

    fn auction(&self, n: u64, c: &mut Columns) {
        let rng = &mut SmallRng::seed_from_u64(n);
        c.int(0, (auction_last_id(n) + FIRST_AUCTION_ID) as i64);
        letters(rng, 20, &mut c.scratch);
        c.take_scratch(0);
        letters(rng, 100, &mut c.scratch);
        c.take_scratch(1);
        let initial = price(rng);
        c.int(1, initial);
        c.int(2, initial + price(rng));
        let time = self.timing.millis(n);
        // An auction lasts up to twice the time until IN_FLIGHT_AUCTIONS
        // more auctions have started.
        let ahead = (IN_FLIGHT_AUCTIONS as u64 * PROPORTION_DENOMINATOR) / AUCTION_PROPORTION;
        let horizon = self.timing.millis(n + ahead) - time;
        let length = 1 + rng.gen_range(0..(horizon * 2).max(1));
        c.time_ms(0, time);
        c.time_ms(1, time + length);
        let seller = if rng.gen_range(0..HOT_SELLER_RATIO) > 0 {
            (person_last_id(n) / HOT_BLOCK) * HOT_BLOCK
        } else {
            person_next_id(n, rng)
        };
        c.int(3, (seller + FIRST_PERSON_ID) as i64);
        c.int(
            4,
            (FIRST_CATEGORY_ID + rng.gen_range(0..NUM_CATEGORIES) as u64) as i64,
        );
        extra(rng, 8 + 20 + 100 + 40, AVG_AUCTION_BYTES, &mut c.scratch);
        c.take_scratch(2);
    }

    fn bid(&self, n: u64, c: &mut Columns) {
        let rng = &mut SmallRng::seed_from_u64(n);
        let auction = if 0 < rng.gen_range(0..HOT_AUCTION_RATIO) {
            (auction_last_id(n) / HOT_BLOCK) * HOT_BLOCK
        } else {
            auction_next_id(n, rng)
        };
        let bidder = if 0 < rng.gen_range(0..HOT_BIDDER_RATIO) {
            (person_last_id(n) / HOT_BLOCK) * HOT_BLOCK + 1
        } else {
            person_next_id(n, rng)
        };
        c.int(0, (auction + FIRST_AUCTION_ID) as i64);
        c.int(1, (bidder + FIRST_PERSON_ID) as i64);
        c.int(2, price(rng));
        let table = channels();
        if rng.gen_range(0..HOT_CHANNEL_RATIO) > 0 {
            let i = rng.gen_range(0..HOT_CHANNELS.len());
            c.text(0, HOT_CHANNELS[i]);
            c.text(1, &table.hot_urls[i]);
        } else if let Some((channel, url)) = table.all.choose(rng) {
            c.text(0, channel);
            c.text(1, url);
        }
        c.time_ms(0, self.timing.millis(n));
        extra(rng, 32, AVG_BID_BYTES, &mut c.scratch);
        c.take_scratch(2);
    }
}

#[cfg(test)]
mod tests;
