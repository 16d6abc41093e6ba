//! Incremental maintenance: a late event corrects exactly the rows it affects, as a retraction of
//! the old row and an insertion of the new one in its own epoch; other keys emit nothing.

use convoflow_events::{parse_event, Tenants};
use convoflow_operators::dataflow::build;
use convoflow_operators::Update;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

fn event(line: &str) -> convoflow_events::Event {
    parse_event(line.as_bytes()).expect("valid event")
}

#[test]
fn a_late_reply_retracts_and_replaces_only_its_threads_rows() {
    let log = timely::execute_directly(|worker| {
        let log: Rc<RefCell<Vec<(u64, Update)>>> = Rc::default();
        let mut input = InputHandle::<u64, CapacityContainerBuilder<Vec<(u64, Box<convoflow_events::Event>)>>>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let sink = log.clone();
            build(input.to_stream(scope), Arc::new(Tenants::default())).updates.probe_with(&probe).sink(
                Pipeline,
                "Log",
                move |(input, _)| {
                    input.for_each(|cap, data| {
                        let time = *cap.least().expect("a time");
                        sink.borrow_mut().extend(data.drain(..).map(|update| (time, update)));
                    })
                },
            );
        });
        let on_time = [
            r#"{"event_id":"a1","tenant_id":"t","ts":"2026-02-02T10:00:00Z","type":"message.received","contact_id":"A","message_id":"ma1"}"#,
            r#"{"event_id":"a2","tenant_id":"t","ts":"2026-02-02T10:10:00Z","type":"message.sent","contact_id":"A","message_id":"ma2","sender":"agent","agent_id":"x"}"#,
            r#"{"event_id":"b1","tenant_id":"t","ts":"2026-02-02T09:00:00Z","type":"message.received","contact_id":"B","message_id":"mb1"}"#,
            r#"{"event_id":"b2","tenant_id":"t","ts":"2026-02-02T09:01:00Z","type":"message.sent","contact_id":"B","message_id":"mb2","sender":"bot"}"#,
        ];
        for (position, line) in on_time.iter().enumerate() {
            input.send((position as u64 + 1, Box::new(event(line))));
        }
        input.advance_to(1);
        while probe.less_than(&1) {
            worker.step();
        }
        let late = r#"{"event_id":"a3","tenant_id":"t","ts":"2026-02-02T10:05:00Z","type":"message.sent","contact_id":"A","message_id":"ma3","sender":"agent","agent_id":"y"}"#;
        input.send((10, Box::new(event(late))));
        input.advance_to(2);
        while probe.less_than(&2) {
            worker.step();
        }
        log.take()
    });

    let late: Vec<&Update> = log.iter().filter(|(time, _)| *time == 1).map(|(_, update)| update).collect();
    let responses: Vec<(String, i64, i64)> = late
        .iter()
        .filter_map(|u| match u {
            Update::Response(row, diff) => Some((row.reply_event_id.clone(), row.response_ms, *diff)),
            _ => None,
        })
        .collect();
    assert_eq!(responses.len(), 2, "{late:#?}");
    assert!(responses.contains(&("a2".into(), 600_000, -1)), "old response retracted: {responses:?}");
    assert!(responses.contains(&("a3".into(), 300_000, 1)), "new response inserted: {responses:?}");

    let cycles: Vec<(Option<String>, i64, i64)> = late
        .iter()
        .filter_map(|u| match u {
            Update::Cycle(row, diff) => Some((row.first_response_agent_id.clone(), row.outbound_count, *diff)),
            _ => None,
        })
        .collect();
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert!(cycles.contains(&(Some("x".into()), 1, -1)) && cycles.contains(&(Some("y".into()), 2, 1)), "{cycles:?}");

    let volumes: Vec<(i64, i64)> = late
        .iter()
        .filter_map(|u| match u {
            Update::Volume(row, diff) => Some((row.messages, *diff)),
            _ => None,
        })
        .collect();
    assert_eq!(volumes.len(), 2, "the agent bucket goes from 1 to 2: {volumes:?}");
    assert!(volumes.contains(&(1, -1)) && volumes.contains(&(2, 1)), "{volumes:?}");

    // Contact A's row did not change (its first message and inbound stats are the same), and
    // thread B was not touched: neither emits anything in the late epoch.
    assert!(!late.iter().any(|u| matches!(u, Update::Contact(..) | Update::Retention(..))), "{late:#?}");
    assert!(
        !late.iter().any(|u| match u {
            Update::Response(row, _) => row.conversation_id == "B",
            Update::Cycle(row, _) => row.conversation_id == "B",
            _ => false,
        }),
        "{late:#?}"
    );
    assert_eq!(late.iter().filter(|u| matches!(u, Update::Event(_))).count(), 1);
}
