//! Incremental maintenance: a late event corrects exactly the rows it affects, as a retraction of
//! the old row and an insertion of the new one in its own epoch; other keys emit nothing.

use convoflow_events::{parse_event, Tenants};
use convoflow_operators::dataflow::build;
use convoflow_operators::{Text, Update};
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

/// Runs the dataflow one epoch per slice of lines and returns every update with its epoch.
fn run_epochs(epochs: &[&[&str]]) -> Vec<(u64, Update)> {
    let epochs: Vec<Vec<String>> = epochs.iter().map(|lines| lines.iter().map(|l| l.to_string()).collect()).collect();
    timely::execute_directly(move |worker| {
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
        let mut position = 0u64;
        for (epoch, lines) in epochs.iter().enumerate() {
            for line in lines {
                position += 1;
                input.send((position, Box::new(event(line))));
            }
            input.advance_to(epoch as u64 + 1);
            while probe.less_than(&(epoch as u64 + 1)) {
                worker.step();
            }
        }
        log.take()
    })
}

#[test]
fn a_late_reply_retracts_and_replaces_only_its_threads_rows() {
    let on_time: &[&str] = &[
        r#"{"event_id":"a1","tenant_id":"t","ts":"2026-02-02T10:00:00Z","type":"message.received","contact_id":"A","message_id":"ma1"}"#,
        r#"{"event_id":"a2","tenant_id":"t","ts":"2026-02-02T10:10:00Z","type":"message.sent","contact_id":"A","message_id":"ma2","sender":"agent","agent_id":"x"}"#,
        r#"{"event_id":"b1","tenant_id":"t","ts":"2026-02-02T09:00:00Z","type":"message.received","contact_id":"B","message_id":"mb1"}"#,
        r#"{"event_id":"b2","tenant_id":"t","ts":"2026-02-02T09:01:00Z","type":"message.sent","contact_id":"B","message_id":"mb2","sender":"bot"}"#,
    ];
    let late: &[&str] = &[
        r#"{"event_id":"a3","tenant_id":"t","ts":"2026-02-02T10:05:00Z","type":"message.sent","contact_id":"A","message_id":"ma3","sender":"agent","agent_id":"y"}"#,
    ];
    let log = run_epochs(&[on_time, late]);

    let late: Vec<&Update> = log.iter().filter(|(time, _)| *time == 1).map(|(_, update)| update).collect();
    let responses: Vec<(Text, i64, i64)> = late
        .iter()
        .filter_map(|u| match u {
            Update::Response(row, diff) => Some((row.reply_event_id.clone(), row.response_ms, *diff)),
            _ => None,
        })
        .collect();
    assert_eq!(responses.len(), 2, "{late:#?}");
    assert!(responses.contains(&("a2".into(), 600_000, -1)), "old response retracted: {responses:?}");
    assert!(responses.contains(&("a3".into(), 300_000, 1)), "new response inserted: {responses:?}");

    let cycles: Vec<(Option<Text>, i64, i64)> = late
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

#[test]
fn a_late_failed_status_retracts_the_campaign_touch_and_reweights_the_conversion() {
    let on_time: &[&str] = &[
        r#"{"event_id":"t1","tenant_id":"t","ts":"2026-02-01T10:00:00Z","type":"touch","contact_id":"A","channel":"ad"}"#,
        r#"{"event_id":"s1","tenant_id":"t","ts":"2026-02-02T10:00:00Z","type":"message.sent","contact_id":"A","message_id":"m1","sender":"campaign","campaign_id":"spring"}"#,
        r#"{"event_id":"buy","tenant_id":"t","ts":"2026-02-03T10:00:00Z","type":"conversion","contact_id":"A","name":"purchase","value":10}"#,
    ];
    let late: &[&str] = &[
        r#"{"event_id":"m1-failed","tenant_id":"t","ts":"2026-02-02T10:00:05Z","type":"message.status","contact_id":"A","message_id":"m1","status":"failed","error_code":131026}"#,
    ];
    let log = run_epochs(&[on_time, late]);
    let linear = |epoch: u64| -> Vec<(Option<Text>, f64, i64)> {
        let mut rows: Vec<_> = log
            .iter()
            .filter(|(time, _)| *time == epoch)
            .filter_map(|(_, u)| match u {
                Update::Attribution(row, diff) if row.model.as_str() == "linear" => {
                    Some((row.touch_event_id.clone(), row.weight.0, *diff))
                }
                _ => None,
            })
            .collect();
        rows.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        rows
    };
    assert_eq!(linear(0), [(Some("s1".into()), 0.5, 1), (Some("t1".into()), 0.5, 1)]);
    // The campaign send failed: its touch goes, and the ad touch takes all the credit.
    assert_eq!(linear(1), [(Some("s1".into()), 0.5, -1), (Some("t1".into()), 0.5, -1), (Some("t1".into()), 1.0, 1)]);

    let statuses: Vec<(String, i64)> = log
        .iter()
        .filter(|(time, _)| *time == 1)
        .filter_map(|(_, u)| match u {
            Update::MessageStatus(row, diff) => Some((row.final_status.as_str().to_owned(), *diff)),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert!(statuses.contains(&("sent".into(), -1)) && statuses.contains(&("failed".into(), 1)), "{statuses:?}");
}
