//! Event identity: `(tenant_id, event_id)` is the dedup key; the fingerprint tells an identical
//! copy from a conflicting one without keeping the whole event.

use crate::Event;
use std::hash::{Hash, Hasher};

/// A fast, seedless 64-bit FNV-1a-style hash over a mix of fields; stable within and across runs.
struct StableHasher(u64);

impl StableHasher {
    fn new(seed: u64) -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325 ^ seed)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= byte as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // Final avalanche (splitmix64) so that nearby inputs spread over workers.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// 128-bit identity of `(tenant_id, event_id)`. Two independent 64-bit hashes make an accidental
/// collision between distinct ids negligible (≈ n² / 2¹²⁹).
pub fn event_key(tenant_id: &str, event_id: &str) -> u128 {
    let hash_with = |seed| {
        let mut hasher = StableHasher::new(seed);
        tenant_id.hash(&mut hasher);
        event_id.hash(&mut hasher);
        hasher.finish()
    };
    ((hash_with(1) as u128) << 64) | hash_with(2) as u128
}

/// Hash of every canonical field, so an identical copy has the same fingerprint.
pub fn fingerprint(event: &Event) -> u64 {
    let mut hasher = StableHasher::new(3);
    event.tenant_id.hash(&mut hasher);
    event.event_id.hash(&mut hasher);
    event.ts.hash(&mut hasher);
    event.kind.hash(&mut hasher);
    event.contact_id.hash(&mut hasher);
    event.conversation_id.hash(&mut hasher);
    event.session_id.hash(&mut hasher);
    event.message_id.hash(&mut hasher);
    event.sender.hash(&mut hasher);
    event.agent_id.hash(&mut hasher);
    event.campaign_id.hash(&mut hasher);
    event.message_type.hash(&mut hasher);
    event.status.hash(&mut hasher);
    event.error_code.hash(&mut hasher);
    event.emoji.hash(&mut hasher);
    event.channel.hash(&mut hasher);
    event.source.hash(&mut hasher);
    event.medium.hash(&mut hasher);
    event.name.hash(&mut hasher);
    event.value.map(f64::to_bits).hash(&mut hasher);
    event.state.hash(&mut hasher);
    event.properties.hash(&mut hasher);
    hasher.finish()
}
