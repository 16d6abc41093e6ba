//! Arrival order is not data: any permutation, duplication and batch split of an event set, on
//! one or two workers, gives identical consolidated tables — and no row ever ends negative.

mod support;

use convoflow_events::{Event, EventType, Sender, SessionState, Status, Tenants};
use proptest::prelude::*;
use support::*;

/// (kind, tenant, contact, agent, minute, extra, variant). Small id spaces — three contacts, five
/// message ids, two senders — and a narrow time range force ties, shared threads, statuses and
/// reactions before their sends, and late corrections.
type Spec = (u8, u8, u8, u8, i64, u8, u8);

fn event_strategy() -> impl Strategy<Value = Spec> {
    (0u8..11, 0u8..2, 0u8..3, 0u8..3, 0i64..40, 0u8..3, 0u8..5)
}

fn make_event(index: usize, (kind, tenant, contact, agent, minute, extra, variant): Spec) -> Event {
    let tenants = ["utc_t", "kolkata_t"];
    // Minutes around a Sunday→Monday local midnight in Kolkata, spread over two weeks.
    let ts = 1_772_389_800_000 - 20 * 60_000 + minute * 60_000 + (extra as i64) * 7 * 86_400_000 / 2;
    let kind_of = [
        EventType::MessageReceived,
        EventType::MessageReceived,
        EventType::MessageSent,
        EventType::MessageSent,
        EventType::ConversationResolved,
        EventType::ConversationAssigned,
        EventType::MessageStatus,
        EventType::MessageReaction,
        EventType::Touch,
        EventType::Conversion,
        EventType::SessionStatus,
    ][kind as usize];
    let mut event = Event::new(tenants[tenant as usize], &format!("ev{index:03}"), ts, kind_of);
    let contact_id = format!("c{contact}");
    event.conversation_id = Some(contact_id.clone().into());
    event.contact_id = Some(contact_id.into());
    event.message_id = Some(format!("m{}", minute % 5).into());
    if variant < 3 || kind_of == EventType::SessionStatus {
        event.session_id = Some(format!("s{}", variant % 2).into());
    }
    match kind_of {
        EventType::MessageSent => {
            let sender = [Sender::Agent, Sender::Bot, Sender::Campaign][agent as usize % 3];
            event.sender = Some(sender);
            match sender {
                Sender::Agent => event.agent_id = Some(format!("a{agent}").into()),
                Sender::Campaign => event.campaign_id = Some(format!("spring{}", variant % 2).into()),
                Sender::Bot => {}
            }
        }
        EventType::MessageStatus => {
            event.status =
                Some([Status::Sent, Status::Delivered, Status::Read, Status::Played, Status::Failed][variant as usize]);
            event.error_code = (variant == 4).then_some(131_026 + agent as i64);
        }
        EventType::MessageReaction => event.emoji = Some(["👍", "❤️", "", "👎🏽", "😂"][variant as usize].into()),
        EventType::Touch => {
            event.channel = Some(["ad", "web", "email"][variant as usize % 3].into());
            event.campaign_id = (variant % 3 == 0).then(|| "ad1".into());
        }
        EventType::Conversion => {
            event.name = Some(["lead", "purchase"][variant as usize % 2].into());
            event.value = Some(variant as f64 * 12.5);
        }
        EventType::SessionStatus => {
            event.state = Some(
                [
                    SessionState::Connected,
                    SessionState::Disconnected,
                    SessionState::QrRequired,
                    SessionState::Blocked,
                    SessionState::Error,
                ][variant as usize],
            );
        }
        _ if agent > 0 => event.agent_id = Some(format!("a{agent}").into()),
        _ => {}
    }
    event
}

/// Kolkata gets its own funnels (one starting at a campaign send) and a short lookback, so
/// configured funnels and the lookback boundary are exercised as well as the defaults.
fn tenants() -> Tenants {
    Tenants::from_json(
        r#"[{"tenant_id":"kolkata_t","timezone":"Asia/Kolkata",
             "funnels":[{"funnel_id":"campaign","window":"3d","steps":[{"type":"message.sent","sender":"campaign"},
                          {"type":"message.received"},{"type":"conversion","name":"purchase"}]},
                        {"funnel_id":"touch_to_lead","steps":[{"type":"touch"},{"type":"conversion","name":"lead"}]}],
             "attribution":{"lookback":"5d","half_life":"1d"}}]"#,
    )
    .expect("valid tenants")
}

fn rendered(output: &RunOutput) -> Vec<(String, Vec<serde_json::Value>)> {
    tables().into_iter().map(|t| (t.to_string(), table_rows(&output.tables, t))).collect()
}

fn no_negative_rows(output: &RunOutput) -> bool {
    output.tables.negative_rows() == 0
}

/// SPEC §5.7: for every conversion and model the weights sum to 1.
fn weights_sum_to_one(output: &RunOutput) -> bool {
    let mut sums: std::collections::BTreeMap<(&str, &str), f64> = Default::default();
    for row in output.tables.attribution.rows() {
        *sums.entry((&row.conversion_event_id, row.model.as_str())).or_default() += row.weight.0;
    }
    sums.values().all(|sum| (sum - 1.0).abs() < 1e-9)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tables_ignore_order_duplication_batching_and_workers(
        specs in prop::collection::vec(event_strategy(), 1..60),
        order_seed in any::<u64>(),
        duplicate_every in 1usize..5,
        batch_sizes in prop::collection::vec(1usize..8, 1..10),
    ) {
        let events: Vec<Event> = specs.into_iter().enumerate().map(|(i, s)| make_event(i, s)).collect();
        let baseline = run_batches(vec![events.clone()], tenants(), 1);
        prop_assert!(no_negative_rows(&baseline));
        prop_assert!(weights_sum_to_one(&baseline));

        // A permutation (deterministic from the seed), with every k-th event delivered twice.
        let mut arrivals: Vec<Event> = events.iter().enumerate()
            .flat_map(|(i, e)| std::iter::repeat_n(e.clone(), if i % duplicate_every == 0 { 2 } else { 1 }))
            .collect();
        let mut state = order_seed | 1;
        for i in (1..arrivals.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            arrivals.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut batches = Vec::new();
        let mut rest = arrivals.as_slice();
        for size in batch_sizes.iter().cycle() {
            if rest.is_empty() { break; }
            let (head, tail) = rest.split_at((*size).min(rest.len()));
            batches.push(head.to_vec());
            rest = tail;
        }

        for workers in [1, 2] {
            let shuffled = run_batches(batches.clone(), tenants(), workers);
            prop_assert!(no_negative_rows(&shuffled));
            prop_assert_eq!(rendered(&shuffled), rendered(&baseline), "workers = {}", workers);
            prop_assert_eq!(shuffled.duplicates as usize, arrivals.len() - events.len());
        }
    }
}
