//! Arrival order is not data: any permutation, duplication and batch split of an event set, on
//! one or two workers, gives identical consolidated tables — and no row ever ends negative.

mod support;

use convoflow_events::{Event, EventType, Sender, Tenants};
use proptest::prelude::*;
use support::*;

/// Small id spaces and a narrow time range force ties, shared threads and late corrections.
fn event_strategy() -> impl Strategy<Value = (u8, u8, u8, u8, i64, u8)> {
    (0u8..6, 0u8..2, 0u8..4, 0u8..3, 0i64..40, 0u8..3)
}

fn make_event(index: usize, (kind, tenant, contact, agent, minute, extra): (u8, u8, u8, u8, i64, u8)) -> Event {
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
    ][kind as usize];
    let mut event = Event::new(tenants[tenant as usize], &format!("ev{index:03}"), ts, kind_of);
    let contact_id = format!("c{contact}");
    event.conversation_id = Some(contact_id.clone());
    event.contact_id = Some(contact_id);
    event.message_id = Some(format!("m{index}"));
    if kind_of == EventType::MessageSent {
        let sender = [Sender::Agent, Sender::Bot, Sender::Campaign][agent as usize % 3];
        event.sender = Some(sender);
        match sender {
            Sender::Agent => event.agent_id = Some(format!("a{agent}")),
            Sender::Campaign => event.campaign_id = Some("spring".into()),
            Sender::Bot => {}
        }
    } else if kind_of != EventType::MessageReceived && agent > 0 {
        event.agent_id = Some(format!("a{agent}"));
    }
    event
}

fn tenants() -> Tenants {
    Tenants::from_json(r#"[{"tenant_id":"kolkata_t","timezone":"Asia/Kolkata"}]"#).unwrap()
}

fn rendered(output: &convoflow_operators::RunOutput) -> Vec<(String, Vec<serde_json::Value>)> {
    TABLES.iter().map(|t| (t.to_string(), table_rows(&output.tables, t))).collect()
}

fn no_negative_rows(output: &convoflow_operators::RunOutput) -> bool {
    let t = &output.tables;
    t.responses.negative_rows() + t.conversation_cycles.negative_rows() + t.message_volume.negative_rows()
        + t.contacts.negative_rows() + t.retention.negative_rows() == 0
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
