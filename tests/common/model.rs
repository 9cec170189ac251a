//! The plain reference model for memberships: a map from user to segment to
//! last-seen time, and the answers docs/DESIGN.md says a lookup must give.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;

use segd::pack::{self, Pack, Segment};

#[derive(Debug, Clone)]
pub struct SegmentDef {
    pub id: u32,
    pub ttl_seconds: u32,
    pub with_times: bool,
}

/// One pack's worth of reference data.
#[derive(Debug, Clone)]
pub struct ModelPack {
    pub name: String,
    pub version: String,
    pub built_at: i64,
    pub segments: Vec<SegmentDef>,
    /// user → segment → last seen as stored (already rounded the documented way).
    pub members: BTreeMap<String, BTreeMap<u32, i64>>,
}

impl ModelPack {
    /// Random memberships for `users` over `segment_ids`, times up to 30 days
    /// before `built_at` (some in the future), some segments without times.
    pub fn random(
        seed: u64,
        name: &str,
        version: &str,
        built_at: i64,
        users: usize,
        segment_ids: impl IntoIterator<Item = u32>,
    ) -> ModelPack {
        let mut rng = StdRng::seed_from_u64(seed);
        let segments: Vec<SegmentDef> = segment_ids
            .into_iter()
            .map(|id| SegmentDef {
                id,
                ttl_seconds: if rng.random_bool(0.4) {
                    rng.random_range(1..=20) * 86_400
                } else {
                    0
                },
                with_times: rng.random_bool(0.8),
            })
            .collect();
        let mut members: BTreeMap<String, BTreeMap<u32, i64>> = BTreeMap::new();
        for user in 0..users {
            let user_id = format!("user-{seed}-{user}");
            let mut user_segments = BTreeMap::new();
            for segment in &segments {
                if rng.random_bool(0.2) {
                    let last_seen = if segment.with_times {
                        let raw = built_at - rng.random_range(-7200..30 * 86_400);
                        pack::last_seen_from_hours_ago(built_at, pack::hours_ago(built_at, raw))
                    } else {
                        built_at
                    };
                    user_segments.insert(segment.id, last_seen);
                }
            }
            // Some users are in the dictionary with no segment at all.
            members.insert(user_id, user_segments);
        }
        ModelPack {
            name: name.to_owned(),
            version: version.to_owned(),
            built_at,
            segments,
            members,
        }
    }

    pub fn to_pack(&self) -> Pack {
        let mut users: Vec<(u64, &String)> = self
            .members
            .keys()
            .map(|user| (segd::user_fingerprint(user), user))
            .collect();
        users.sort();
        let segments = self
            .segments
            .iter()
            .map(|definition| {
                let mut members = RoaringBitmap::new();
                let mut hours = Vec::new();
                for (ordinal, (_, user)) in users.iter().enumerate() {
                    if let Some(&last_seen) = self.members[*user].get(&definition.id) {
                        members.insert(ordinal as u32);
                        hours.push(pack::hours_ago(self.built_at, last_seen));
                    }
                }
                Segment {
                    id: definition.id,
                    name: format!("segment-{}", definition.id),
                    kind: "retargeting".to_owned(),
                    ttl_seconds: definition.ttl_seconds,
                    members,
                    last_seen_hours_ago: definition.with_times.then_some(hours),
                }
            })
            .collect();
        Pack {
            name: self.name.clone(),
            version: self.version.clone(),
            built_at_unix_seconds: self.built_at,
            user_fingerprints: users.iter().map(|(fingerprint, _)| *fingerprint).collect(),
            segments,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        pack::write_pack(&self.to_pack()).expect("model pack writes")
    }

    /// The pack in format v1, as round 1 wrote it.
    #[allow(dead_code)]
    pub fn bytes_v1(&self) -> Vec<u8> {
        pack::write_pack_v1(&self.to_pack()).expect("model pack writes")
    }
}

/// The reference answer over several packs.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub packs: Vec<ModelPack>,
}

impl Model {
    pub fn new(packs: Vec<ModelPack>) -> Self {
        Self { packs }
    }

    /// (matches, unknown) per docs/DESIGN.md.
    pub fn lookup(
        &self,
        user_id: &str,
        segment_ids: &[u32],
        max_age_seconds: u32,
        at: i64,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut matches = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        let wanted: Vec<u32> = if segment_ids.is_empty() {
            self.packs
                .iter()
                .flat_map(|pack| pack.segments.iter().map(|segment| segment.id))
                .collect()
        } else {
            segment_ids.to_vec()
        };
        for segment_id in wanted {
            let found = self.packs.iter().find_map(|pack| {
                pack.segments
                    .iter()
                    .find(|segment| segment.id == segment_id)
                    .map(|segment| (pack, segment))
            });
            let Some((pack, segment)) = found else {
                unknown.insert(segment_id);
                continue;
            };
            let Some(&last_seen) = pack
                .members
                .get(user_id)
                .and_then(|user| user.get(&segment_id))
            else {
                continue;
            };
            let age = (at - last_seen).max(0);
            let within_max_age = max_age_seconds == 0 || age <= max_age_seconds as i64;
            let within_ttl = segment.ttl_seconds == 0 || age <= segment.ttl_seconds as i64;
            if within_max_age && within_ttl {
                matches.insert(segment_id);
            }
        }
        (matches.into_iter().collect(), unknown.into_iter().collect())
    }
}
