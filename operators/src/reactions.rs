//! `reactions` — SPEC §5.9. A contact's latest reaction to a message (by `(ts, event_id)`)
//! replaces its earlier one; `""` removes it. Emoji are compared — and stored — after removing
//! U+FE0F and the skin-tone modifiers U+1F3FB–U+1F3FF (an emoji that is nothing else is a
//! removal too). Positive: 👍 ❤ 😍 🥰 😊 😀 😃 🙏 👏 🎉 💯 ✅; negative: 👎 😡 😠 😞 😢 😤 💔 ❌;
//! else neutral. `sender` and `agent_id` are those of the reacted message's `message.sent`, null
//! until it is seen; a reaction that arrives first is corrected when the send arrives, because
//! both live in the same per-message state (`messages.rs`).
//! Columns: `tenant_id, message_id, contact_id, emoji, sentiment, ts, sender, agent_id`, and
//! `campaign_id` of the reacted message (an addition, so CSAT by campaign needs no join).

use crate::message_status::first_send;
use crate::messages::{MessageEvent, MessagePart};
use crate::rows::Text;
use crate::rows::{ReactionRow, Sentiment};
use std::collections::BTreeMap;

const POSITIVE: &[&str] = &["👍", "❤", "😍", "🥰", "😊", "😀", "😃", "🙏", "👏", "🎉", "💯", "✅"];
const NEGATIVE: &[&str] = &["👎", "😡", "😠", "😞", "😢", "😤", "💔", "❌"];

pub fn normalize_emoji(emoji: &str) -> Text {
    emoji.chars().filter(|&c| c != '\u{FE0F}' && !('\u{1F3FB}'..='\u{1F3FF}').contains(&c)).collect()
}

pub fn sentiment(normalized: &str) -> Sentiment {
    if POSITIVE.contains(&normalized) {
        Sentiment::Positive
    } else if NEGATIVE.contains(&normalized) {
        Sentiment::Negative
    } else {
        Sentiment::Neutral
    }
}

pub fn derive_reactions(tenant_id: &str, message_id: &str, events: &[MessageEvent]) -> Vec<ReactionRow> {
    // Events are in (ts, event_id) order, so the last reaction seen per contact is its latest.
    let mut latest: BTreeMap<&str, (&MessageEvent, &str)> = BTreeMap::new();
    for event in events {
        if let (MessagePart::Reaction { emoji }, Some(contact)) = (&event.part, &event.contact_id) {
            latest.insert(contact, (event, emoji));
        }
    }
    let (sender, agent_id, campaign_id) = match first_send(events).map(|e| &e.part) {
        Some(MessagePart::Sent { sender, agent_id, campaign_id }) => {
            (Some(*sender), agent_id.clone(), campaign_id.clone())
        }
        _ => (None, None, None),
    };
    latest
        .into_iter()
        .filter_map(|(contact_id, (event, emoji))| {
            let emoji = normalize_emoji(emoji);
            (!emoji.is_empty()).then(|| ReactionRow {
                tenant_id: tenant_id.into(),
                message_id: message_id.into(),
                contact_id: contact_id.into(),
                sentiment: sentiment(&emoji),
                emoji,
                ts: event.ts,
                sender,
                agent_id: agent_id.clone(),
                campaign_id: campaign_id.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_selectors_and_skin_tones_are_removed() {
        assert_eq!(normalize_emoji("❤️"), "❤");
        assert_eq!(normalize_emoji("👍🏽"), "👍");
        assert_eq!(normalize_emoji("\u{FE0F}"), "");
        assert_eq!(sentiment(&normalize_emoji("👎🏿")), Sentiment::Negative);
        assert_eq!(sentiment(&normalize_emoji("❤️")), Sentiment::Positive);
        assert_eq!(sentiment("😂"), Sentiment::Neutral);
    }
}
