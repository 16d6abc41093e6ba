//! `attribution` — SPEC §5.7, multi-touch attribution per contact.
//!
//! Touch points of a contact: its `touch` events, and its `message.sent` with sender `campaign`
//! whose message did not end `failed` (`channel` = `whatsapp`, the send's `campaign_id`; these
//! come from `messages.rs`, so a late `failed` status retracts the touch and every conversion it
//! had credit in is re-weighted). For each `conversion`, the touches with `ts` ≤ the conversion's
//! and `conversion.ts − ts` ≤ the lookback, in `(ts, event_id)` order; n = their count. Weights:
//! `first_touch` 1 to the first; `last_touch` 1 to the last; `linear` 1/n each; `time_decay`
//! 2^(−(conversion.ts − touch.ts) / half_life) normalized to sum 1; `position_based` n = 1 → 1,
//! n = 2 → ½ each, n ≥ 3 → 0.4 first, 0.4 last, 0.2/(n − 2) each in between. No touch → one
//! row per model with `channel` = `direct`, null touch, weight 1. One row per conversion, model
//! and touch with weight > 0; `credited_value` = weight × value. Lookback and half-life are the
//! tenant's (`attribution.lookback`, `attribution.half_life`).

use crate::ordered::{add_to_multiset, insert_ordered, Ordered};
use crate::reduce::reduce;
use crate::rows::Text;
use crate::rows::{AttributionModel, AttributionRow, Real};
use convoflow_events::{AttributionSettings, Event, EventType, Tenants};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use timely::dataflow::StreamVec;

/// A touch point. Field order makes the derived order `(ts, event_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Touch {
    pub ts: i64,
    pub event_id: Text,
    pub channel: Text,
    pub campaign_id: Option<Text>,
    pub source: Option<Text>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    pub ts: i64,
    pub event_id: Text,
    pub name: Text,
    pub value: f64,
}

impl Ordered for Conversion {
    fn order_key(&self) -> (i64, &str) {
        (self.ts, &self.event_id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AttributionInput {
    Touch(Touch, i64),
    Conversion(Conversion),
}

#[derive(Default, Serialize, Deserialize)]
pub struct ContactJourney {
    touches: BTreeMap<Touch, i64>,
    conversions: Vec<Conversion>,
}

impl ContactJourney {
    fn add(&mut self, input: AttributionInput) {
        match input {
            AttributionInput::Touch(touch, diff) => add_to_multiset(&mut self.touches, touch, diff),
            AttributionInput::Conversion(conversion) => insert_ordered(&mut self.conversions, conversion),
        }
    }
}

/// The attribution record of a `touch` or `conversion` event, keyed by `(tenant_id, contact_id)`.
pub fn attribution_record(event: &Event) -> Option<((Text, Text), AttributionInput)> {
    let input = match event.kind {
        EventType::Touch => AttributionInput::Touch(
            Touch {
                ts: event.ts,
                event_id: event.event_id.clone(),
                channel: event.channel.clone()?,
                campaign_id: event.campaign_id.clone(),
                source: event.source.clone(),
            },
            1,
        ),
        EventType::Conversion => AttributionInput::Conversion(Conversion {
            ts: event.ts,
            event_id: event.event_id.clone(),
            name: event.name.clone()?,
            value: event.value.unwrap_or(0.0),
        }),
        _ => return None,
    };
    Some(((event.tenant_id.clone(), event.contact_id.clone()?), input))
}

/// The weight of each of `touches` (in order, conversion at `conversion_ts`) under `model`.
pub fn weights(model: AttributionModel, touches: &[&Touch], conversion_ts: i64, half_life_ms: i64) -> Vec<f64> {
    let n = touches.len();
    let mut weights = vec![0.0; n];
    if n == 0 {
        return weights;
    }
    match model {
        AttributionModel::FirstTouch => weights[0] = 1.0,
        AttributionModel::LastTouch => weights[n - 1] = 1.0,
        AttributionModel::Linear => weights.fill(1.0 / n as f64),
        AttributionModel::TimeDecay => {
            // Measured from the latest touch rather than the conversion: the common factor
            // cancels in the normalization, and the latest touch's weight 1 cannot underflow.
            let latest = touches[n - 1].ts.min(conversion_ts);
            for (weight, touch) in weights.iter_mut().zip(touches) {
                *weight = (-((latest - touch.ts) as f64) / half_life_ms as f64).exp2();
            }
            let total: f64 = weights.iter().sum();
            weights.iter_mut().for_each(|w| *w /= total);
        }
        AttributionModel::PositionBased => match n {
            1 => weights[0] = 1.0,
            2 => weights.fill(0.5),
            _ => {
                weights.fill(0.2 / (n - 2) as f64);
                weights[0] = 0.4;
                weights[n - 1] = 0.4;
            }
        },
    }
    weights
}

pub fn derive_attribution(
    tenant_id: &str,
    contact_id: &str,
    journey: &ContactJourney,
    settings: AttributionSettings,
) -> Vec<AttributionRow> {
    let touches: Vec<&Touch> =
        journey.touches.iter().filter(|(_, count)| **count > 0).map(|(touch, _)| touch).collect();
    let mut rows = Vec::new();
    for conversion in &journey.conversions {
        let end = touches.partition_point(|t| t.ts <= conversion.ts);
        let start = touches.partition_point(|t| t.ts < conversion.ts.saturating_sub(settings.lookback_ms));
        let credited = &touches[start..end];
        let row = |model: AttributionModel, touch: Option<&Touch>, weight: f64| AttributionRow {
            tenant_id: tenant_id.into(),
            model,
            conversion_event_id: conversion.event_id.clone(),
            conversion_ts: conversion.ts,
            conversion_name: conversion.name.clone(),
            conversion_value: Real(conversion.value),
            contact_id: contact_id.into(),
            touch_event_id: touch.map(|t| t.event_id.clone()),
            touch_ts: touch.map(|t| t.ts),
            channel: touch.map_or_else(|| "direct".into(), |t| t.channel.clone()),
            campaign_id: touch.and_then(|t| t.campaign_id.clone()),
            source: touch.and_then(|t| t.source.clone()),
            weight: Real(weight),
            credited_value: Real(weight * conversion.value),
        };
        for model in AttributionModel::ALL {
            if credited.is_empty() {
                rows.push(row(model, None, 1.0));
                continue;
            }
            let model_weights = weights(model, credited, conversion.ts, settings.half_life_ms);
            for (touch, weight) in credited.iter().zip(model_weights) {
                if weight > 0.0 {
                    rows.push(row(model, Some(touch), weight));
                }
            }
        }
    }
    rows
}

pub fn attribution<'s>(
    keyed: StreamVec<'s, u64, ((Text, Text), AttributionInput)>,
    tenants: Arc<Tenants>,
) -> StreamVec<'s, u64, (AttributionRow, i64)> {
    reduce(
        keyed,
        "Attribution",
        |journey: &mut ContactJourney, input| journey.add(input),
        move |(tenant_id, contact_id): &(Text, Text), journey| {
            derive_attribution(tenant_id, contact_id, journey, tenants.attribution(tenant_id))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(ts: i64) -> Touch {
        Touch {
            ts,
            event_id: compact_str::format_compact!("t{ts}"),
            channel: "ad".into(),
            campaign_id: None,
            source: None,
        }
    }

    #[test]
    fn every_model_sums_to_one() {
        let owned: Vec<Touch> = [0, 10, 20, 30, 40].map(touch).to_vec();
        for n in 1..=owned.len() {
            let touches: Vec<&Touch> = owned[..n].iter().collect();
            for model in AttributionModel::ALL {
                let sum: f64 = weights(model, &touches, 100, 25).iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "{model:?} n={n}: {sum}");
            }
        }
    }

    #[test]
    fn time_decay_halves_per_half_life_and_survives_tiny_half_lives() {
        let owned = [touch(0), touch(7)];
        let touches: Vec<&Touch> = owned.iter().collect();
        let w = weights(AttributionModel::TimeDecay, &touches, 14, 7);
        assert!((w[0] - 1.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0 / 3.0).abs() < 1e-12, "{w:?}");
        let w = weights(AttributionModel::TimeDecay, &[&touch(0), &touch(86_400_000)], 86_400_000, 1);
        assert_eq!(w, vec![0.0, 1.0]);
    }

    #[test]
    fn position_based_gives_the_middle_a_fifth() {
        let owned: Vec<Touch> = [0, 1, 2, 3].map(touch).to_vec();
        let touches: Vec<&Touch> = owned.iter().collect();
        assert_eq!(weights(AttributionModel::PositionBased, &touches, 5, 1), vec![0.4, 0.1, 0.1, 0.4]);
    }
}
