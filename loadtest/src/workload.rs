//! The request generator: what each workload sends, independent of the target.
//!
//! Requests are built as the segd protobuf messages (a `Decide` as a
//! [`DecideDraw`]: the user and which catalogue line items); the Redis target
//! reads the same requests and translates them, so both targets see the same
//! users, the same segment lists and the same candidates from the same seed.
//! This module never performs I/O on the network.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use prost::Message;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use segd::proto::{
    BatchLookupRequest, Calendar, Candidate, FrequencyCap, Impression, LookupRequest,
    RecordImpressionsRequest, SegmentRef,
};

use crate::cli::{RunArgs, Workload, flag_name};

const DAY_SECONDS: u32 = 86_400;
/// Line items per campaign: `li:{n}` belongs to `camp:{n / 10}`.
const LINE_ITEMS_PER_CAMPAIGN: u32 = 10;

/// A segment as the load generator needs it: an id to ask for, and the TTL the
/// Redis target applies client-side (the server applies it itself).
#[derive(Debug, Clone)]
pub struct SegmentSpec {
    pub segment_id: u32,
    pub kind: String,
    /// 0 = no TTL.
    pub ttl_seconds: u32,
}

/// Everything loaded from files before the run, shared read-only by workers.
#[derive(Debug, Default)]
pub struct Dataset {
    pub users: Vec<String>,
    pub segments: Vec<SegmentSpec>,
    pub ttl_by_segment: HashMap<u32, u32>,
    /// The candidate catalogue: one per line item, `Candidate.id` = `li:{n}`.
    pub line_items: Vec<Candidate>,
    /// `line_items` as protobuf bytes, encoded once: a gRPC `Decide` is these
    /// concatenated, not 50 candidates cloned and encoded per request.
    pub encoded_line_items: Vec<Bytes>,
}

/// One request of any workload.
#[derive(Debug, Clone)]
pub enum Request {
    Lookup(LookupRequest),
    Batch(BatchLookupRequest),
    Decide(DecideDraw),
    Record(RecordImpressionsRequest),
    Health,
}

impl Request {
    /// User lookups this request performs, for the "user lookups/s" figure.
    pub fn user_lookups(&self) -> u64 {
        match self {
            Request::Lookup(_) | Request::Decide(_) => 1,
            Request::Batch(batch) => batch.requests.len() as u64,
            Request::Record(_) | Request::Health => 0,
        }
    }
}

/// One `Decide`: a user and which line items of the catalogue, by index, so no
/// target clones candidates per request: the gRPC target concatenates their
/// encoded bytes ([`DecideDraw::encode`]), the Redis target reads them in place.
#[derive(Debug, Clone)]
pub struct DecideDraw {
    pub user_id: String,
    /// Indices into `Dataset::line_items`, in request order.
    line_items: Vec<u32>,
    /// Named by id (`line_item_ids`, registered on the server) instead of inline.
    registered: bool,
    dataset: Arc<Dataset>,
}

impl DecideDraw {
    /// Decisions the reply must hold: one per line item asked.
    pub fn asked(&self) -> usize {
        self.line_items.len()
    }

    /// The inline candidates (none when the line items are registered).
    pub fn candidates(&self) -> impl Iterator<Item = &Candidate> {
        let inline = if self.registered {
            &[][..]
        } else {
            &self.line_items[..]
        };
        inline
            .iter()
            .map(|&index| &self.dataset.line_items[index as usize])
    }

    /// The `DecideRequest` as protobuf bytes: `user_id` (1), then each line item
    /// as a `candidates` (2) or a `line_item_ids` (4) entry — what prost writes
    /// for the message (a test compares the bytes).
    pub fn encode(&self) -> Bytes {
        let chunk = |index: u32| {
            let index = index as usize;
            if self.registered {
                self.dataset.line_items[index].id.as_bytes()
            } else {
                &self.dataset.encoded_line_items[index][..]
            }
        };
        let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let size = field_len(self.user_id.len())
            + self
                .line_items
                .iter()
                .map(|&index| field_len(chunk(index).len()))
                .sum::<usize>();
        let mut buf = BytesMut::with_capacity(size);
        // A singular string is omitted when empty; repeated entries never are.
        if !self.user_id.is_empty() {
            put_bytes_field(&mut buf, 1, self.user_id.as_bytes());
        }
        let field = if self.registered { 4 } else { 2 };
        for &index in &self.line_items {
            put_bytes_field(&mut buf, field, chunk(index));
        }
        buf.freeze()
    }
}

/// One length-delimited field.
fn put_bytes_field(buf: &mut BytesMut, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

impl Dataset {
    /// Loads what `workload` needs; names the missing flag when a file is required.
    pub fn load(args: &RunArgs) -> Result<Dataset> {
        let needs_users = args.workload != Workload::Health;
        let needs_segments = matches!(
            args.workload,
            Workload::Lookup | Workload::Batch | Workload::Decide | Workload::Mixed
        );
        let mut dataset = Dataset::default();
        if needs_users {
            let Some(path) = &args.queries else {
                bail!(
                    "--queries FILE is required for --workload {}",
                    flag_name(args.workload)
                );
            };
            dataset.users = read_users(path)?;
        }
        // The segment table is also useful to lookup-all against Redis (TTLs).
        if let Some(path) = &args.segments_file {
            dataset.segments = read_segments(path)?;
        } else if needs_segments {
            bail!(
                "--segments-file FILE is required for --workload {}",
                flag_name(args.workload)
            );
        }
        dataset.ttl_by_segment = dataset
            .segments
            .iter()
            .map(|segment| (segment.segment_id, segment.ttl_seconds))
            .collect();
        if !dataset.segments.is_empty() {
            let mut rng = SmallRng::seed_from_u64(args.seed ^ 0x11e_17e3);
            dataset.line_items = (0..args.line_items.max(1))
                .map(|line_item| line_item_candidate(line_item, &dataset.segments, &mut rng))
                .collect();
            dataset.encoded_line_items = dataset
                .line_items
                .iter()
                .map(|candidate| Bytes::from(candidate.encode_to_vec()))
                .collect();
        }
        Ok(dataset)
    }
}

fn read_users(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --queries {}", path.display()))?;
    let users: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if users.is_empty() {
        bail!("--queries {}: no user ids in the file", path.display());
    }
    Ok(users)
}

/// Reads `segment_id<TAB>name[<TAB>kind[<TAB>ttl_seconds]]`, as `segctl build` does.
pub fn read_segments(path: &Path) -> Result<Vec<SegmentSpec>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --segments-file {}", path.display()))?;
    let mut segments = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split('\t');
        let segment_id: u32 = fields
            .next()
            .unwrap_or_default()
            .trim()
            .parse()
            .with_context(|| {
                format!("{}:{line_number}: segment id is not a u32", path.display())
            })?;
        let _name = fields.next();
        let kind = fields.next().unwrap_or_default().trim().to_owned();
        let ttl_seconds: u32 = match fields.next().map(str::trim) {
            None | Some("") => 0,
            Some(ttl) => ttl.parse().with_context(|| {
                format!("{}:{line_number}: ttl_seconds is not a u32", path.display())
            })?,
        };
        segments.push(SegmentSpec {
            segment_id,
            kind,
            ttl_seconds,
        });
    }
    if segments.is_empty() {
        bail!(
            "--segments-file {}: no segments in the file",
            path.display()
        );
    }
    Ok(segments)
}

/// A line item's targeting: three segment refs in one of the shapes ad servers
/// use, an exclusion always among them, plus a daily line-item cap and an
/// hourly campaign cap.
fn line_item_candidate(line_item: u32, segments: &[SegmentSpec], rng: &mut SmallRng) -> Candidate {
    let exclusions: Vec<&SegmentSpec> = segments
        .iter()
        .filter(|segment| segment.kind == "exclusion")
        .collect();
    let segment_ref = |pool_exclusions: bool, rng: &mut SmallRng| {
        let segment = if pool_exclusions && !exclusions.is_empty() {
            exclusions[rng.random_range(0..exclusions.len())]
        } else {
            &segments[rng.random_range(0..segments.len())]
        };
        let max_age_seconds = *[0, 7 * DAY_SECONDS, 30 * DAY_SECONDS]
            .choose(rng)
            .unwrap_or(&0);
        SegmentRef {
            segment_id: segment.segment_id,
            max_age_seconds,
        }
    };
    let shape: f64 = rng.random();
    let (all_of, any_of) = if shape < 0.5 {
        (vec![segment_ref(false, rng)], vec![segment_ref(false, rng)])
    } else if shape < 0.8 {
        (
            vec![],
            vec![segment_ref(false, rng), segment_ref(false, rng)],
        )
    } else {
        (
            vec![segment_ref(false, rng), segment_ref(false, rng)],
            vec![],
        )
    };
    let none_of = vec![segment_ref(true, rng)];
    Candidate {
        id: format!("li:{line_item}"),
        all_of,
        any_of,
        none_of,
        caps: vec![
            FrequencyCap {
                key: format!("li:{line_item}"),
                limit: 3,
                window_seconds: 0,
                calendar: Calendar::Day as i32,
                utc_offset_minutes: 0,
            },
            FrequencyCap {
                key: format!("camp:{}", line_item / LINE_ITEMS_PER_CAMPAIGN),
                limit: 10,
                window_seconds: 3_600,
                calendar: Calendar::Rolling as i32,
                utc_offset_minutes: 0,
            },
        ],
    }
}

/// Knobs of the generator, copied from the run flags.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub workload: Workload,
    pub lookup_segments: usize,
    pub batch_size: usize,
    pub candidates: usize,
    pub record_batch: usize,
    pub max_age_seconds: u32,
    /// Distinct line items `li:{n}` impressions are recorded against.
    pub line_items: u32,
    /// Decide names registered line items by id instead of sending them inline.
    pub registered_line_items: bool,
}

/// One per worker: its own RNG so workers never contend, seeded from the run seed
/// and the worker index so a run is repeatable.
pub struct Generator {
    dataset: Arc<Dataset>,
    config: GeneratorConfig,
    rng: SmallRng,
    /// Makes impression ids unique across workers and runs.
    impression_prefix: String,
    impression_counter: u64,
}

impl Generator {
    pub fn new(
        dataset: Arc<Dataset>,
        config: GeneratorConfig,
        seed: u64,
        worker_index: usize,
        run_nonce: u64,
    ) -> Generator {
        Generator {
            dataset,
            config,
            rng: SmallRng::seed_from_u64(
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ worker_index as u64,
            ),
            impression_prefix: format!("lt{run_nonce:x}-{worker_index}-"),
            impression_counter: 0,
        }
    }

    pub fn next_request(&mut self) -> Request {
        match self.config.workload {
            Workload::Lookup => Request::Lookup(self.lookup(true)),
            Workload::LookupAll => Request::Lookup(self.lookup(false)),
            Workload::Batch => Request::Batch(self.batch()),
            Workload::Decide => Request::Decide(self.decide()),
            Workload::Record => Request::Record(self.record()),
            Workload::Health => Request::Health,
            Workload::Mixed => {
                let roll = self.rng.random_range(0..100u32);
                if roll < 70 {
                    Request::Lookup(self.lookup(true))
                } else if roll < 90 {
                    Request::Decide(self.decide())
                } else {
                    Request::Record(self.record())
                }
            }
        }
    }

    fn user(&mut self) -> String {
        self.dataset.users[self.rng.random_range(0..self.dataset.users.len())].clone()
    }

    /// Distinct random segment ids (fewer when the table is smaller).
    fn segment_ids(&mut self) -> Vec<u32> {
        let wanted = self.config.lookup_segments.min(self.dataset.segments.len());
        let mut segment_ids: Vec<u32> = self
            .dataset
            .segments
            .choose_multiple(&mut self.rng, wanted)
            .map(|segment| segment.segment_id)
            .collect();
        segment_ids.sort_unstable();
        segment_ids
    }

    fn lookup(&mut self, listed: bool) -> LookupRequest {
        LookupRequest {
            user_id: self.user(),
            segment_ids: if listed {
                self.segment_ids()
            } else {
                Vec::new()
            },
            max_age_seconds: self.config.max_age_seconds,
            at_unix_seconds: 0,
        }
    }

    /// One segment list for the whole batch: a bidder asks the same line items'
    /// segments for many users.
    fn batch(&mut self) -> BatchLookupRequest {
        let segment_ids = self.segment_ids();
        let requests = (0..self.config.batch_size)
            .map(|_| LookupRequest {
                user_id: self.user(),
                segment_ids: segment_ids.clone(),
                max_age_seconds: self.config.max_age_seconds,
                at_unix_seconds: 0,
            })
            .collect();
        BatchLookupRequest { requests }
    }

    fn decide(&mut self) -> DecideDraw {
        let catalogue = self.dataset.line_items.len();
        let wanted = self.config.candidates.min(catalogue);
        let line_items = rand::seq::index::sample(&mut self.rng, catalogue, wanted)
            .iter()
            .map(|index| index as u32)
            .collect();
        DecideDraw {
            user_id: self.user(),
            line_items,
            registered: self.config.registered_line_items,
            dataset: Arc::clone(&self.dataset),
        }
    }

    fn record(&mut self) -> RecordImpressionsRequest {
        let line_item_count = self.config.line_items.max(1);
        let impressions = (0..self.config.record_batch)
            .map(|_| {
                let line_item = self.rng.random_range(0..line_item_count);
                self.impression_counter += 1;
                Impression {
                    user_id: self.user(),
                    cap_keys: vec![
                        format!("li:{line_item}"),
                        format!("camp:{}", line_item / LINE_ITEMS_PER_CAMPAIGN),
                    ],
                    at_unix_seconds: 0,
                    impression_id: format!("{}{}", self.impression_prefix, self.impression_counter),
                }
            })
            .collect();
        RecordImpressionsRequest { impressions }
    }
}

#[cfg(test)]
mod tests {
    use segd::proto::DecideRequest;

    use super::*;

    fn dataset() -> Arc<Dataset> {
        let segments: Vec<SegmentSpec> = (1..=40)
            .map(|segment_id| SegmentSpec {
                segment_id,
                kind: if segment_id % 3 == 0 {
                    "purchasers"
                } else {
                    "viewed"
                }
                .to_owned(),
                ttl_seconds: 86_400,
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(5);
        let line_items: Vec<Candidate> = (0..300)
            .map(|line_item| line_item_candidate(line_item, &segments, &mut rng))
            .collect();
        Arc::new(Dataset {
            users: vec!["user-1".to_owned()],
            encoded_line_items: line_items
                .iter()
                .map(|candidate| Bytes::from(candidate.encode_to_vec()))
                .collect(),
            line_items,
            segments,
            ..Dataset::default()
        })
    }

    #[test]
    fn a_draw_encodes_as_prost_encodes_the_request() {
        let dataset = dataset();
        for (registered, user_id, line_items) in [
            (false, "user-1", vec![0, 299, 7, 150]),
            (true, "user-1", vec![3, 2, 1]),
            (false, "", vec![]),
            (true, "u", vec![298]),
        ] {
            let draw = DecideDraw {
                user_id: user_id.to_owned(),
                line_items: line_items.clone(),
                registered,
                dataset: Arc::clone(&dataset),
            };
            let picked = line_items
                .iter()
                .map(|&index| &dataset.line_items[index as usize]);
            let request = DecideRequest {
                user_id: user_id.to_owned(),
                candidates: if registered {
                    vec![]
                } else {
                    picked.clone().cloned().collect()
                },
                line_item_ids: if registered {
                    picked.map(|c| c.id.clone()).collect()
                } else {
                    vec![]
                },
                ..Default::default()
            };
            assert_eq!(
                draw.encode(),
                Bytes::from(request.encode_to_vec()),
                "registered {registered}"
            );
            assert_eq!(draw.asked(), line_items.len());
            assert_eq!(
                draw.candidates().count(),
                if registered { 0 } else { line_items.len() }
            );
        }
    }
}
