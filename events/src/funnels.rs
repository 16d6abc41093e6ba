//! Funnel definitions (SPEC §5.6) as a tenants file gives them, and the default funnel:
//!
//! ```json
//! {"funnel_id": "support_to_sale", "window": "14d",
//!  "steps": [{"type": "message.received"},
//!            {"type": "message.sent", "sender": ["agent", "bot"]},
//!            {"type": "conversion", "name": "purchase"}]}
//! ```
//! `window` is a duration (`30m`, `36h`, `14d`; default 14 days). A step matches events of its
//! `type`; `sender` (a set) narrows `message.sent` steps, `name` narrows `conversion` steps.

use crate::time::parse_duration_ms;
use crate::{EventType, Sender};
use serde::Deserialize;

pub const DEFAULT_FUNNEL_ID: &str = "default";
pub const DEFAULT_FUNNEL_WINDOW_MS: i64 = 14 * 86_400_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunnelStep {
    pub kind: EventType,
    /// For `message.sent`: the senders that fit; empty means any.
    pub senders: Vec<Sender>,
    /// For `conversion`: the conversion name that fits; `None` means any.
    pub name: Option<String>,
}

impl FunnelStep {
    fn new(kind: EventType) -> Self {
        FunnelStep { kind, senders: Vec::new(), name: None }
    }

    /// Whether an event with these fields fits the step.
    pub fn fits(&self, kind: EventType, sender: Option<Sender>, name: Option<&str>) -> bool {
        kind == self.kind
            && (self.senders.is_empty() || sender.is_some_and(|s| self.senders.contains(&s)))
            && self.name.as_deref().is_none_or(|wanted| name == Some(wanted))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Funnel {
    pub funnel_id: String,
    pub steps: Vec<FunnelStep>,
    pub window_ms: i64,
}

impl Funnel {
    /// SPEC §5.6: received → agent/bot reply → received again → lead → purchase, in 14 days.
    pub fn default_funnel() -> Funnel {
        let conversion =
            |name: &str| FunnelStep { name: Some(name.to_owned()), ..FunnelStep::new(EventType::Conversion) };
        Funnel {
            funnel_id: DEFAULT_FUNNEL_ID.to_owned(),
            steps: vec![
                FunnelStep::new(EventType::MessageReceived),
                FunnelStep { senders: vec![Sender::Agent, Sender::Bot], ..FunnelStep::new(EventType::MessageSent) },
                FunnelStep::new(EventType::MessageReceived),
                conversion("lead"),
                conversion("purchase"),
            ],
            window_ms: DEFAULT_FUNNEL_WINDOW_MS,
        }
    }

    /// Whether an event fits any step, i.e. whether the funnel needs to see it at all.
    pub fn concerns(&self, kind: EventType, sender: Option<Sender>, name: Option<&str>) -> bool {
        self.steps.iter().any(|step| step.fits(kind, sender, name))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    sender: Option<SenderSet>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SenderSet {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FunnelEntry {
    funnel_id: String,
    steps: Vec<StepEntry>,
    #[serde(default)]
    window: Option<String>,
}

impl FunnelEntry {
    /// Validates the entry; the error names what is wrong, for the tenants file's message.
    pub(crate) fn into_funnel(self) -> Result<Funnel, String> {
        let id = &self.funnel_id;
        if id.is_empty() {
            return Err("a funnel has an empty `funnel_id`".into());
        }
        if self.steps.is_empty() {
            return Err(format!("funnel `{id}` has no steps"));
        }
        let window_ms = match &self.window {
            None => DEFAULT_FUNNEL_WINDOW_MS,
            Some(text) => parse_duration_ms(text)
                .ok_or_else(|| format!("funnel `{id}`: bad window `{text}` (expected e.g. 30m, 36h, 14d)"))?,
        };
        let mut steps = Vec::with_capacity(self.steps.len());
        for (number, step) in self.steps.into_iter().enumerate() {
            let at = format!("funnel `{id}` step {}", number + 1);
            let kind = EventType::parse(&step.kind).ok_or_else(|| {
                format!("{at}: unknown type `{}` (expected one of {})", step.kind, EventType::expected())
            })?;
            let names = match step.sender {
                None => Vec::new(),
                Some(SenderSet::One(one)) => vec![one],
                Some(SenderSet::Many(many)) => many,
            };
            let senders = names
                .iter()
                .map(|s| {
                    Sender::parse(s)
                        .ok_or_else(|| format!("{at}: unknown sender `{s}` (expected {})", Sender::expected()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !senders.is_empty() && kind != EventType::MessageSent {
                return Err(format!("{at}: `sender` applies only to message.sent steps"));
            }
            if step.name.is_some() && kind != EventType::Conversion {
                return Err(format!("{at}: `name` applies only to conversion steps"));
            }
            steps.push(FunnelStep { kind, senders, name: step.name });
        }
        Ok(Funnel { funnel_id: self.funnel_id, steps, window_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_funnel_steps_fit_as_the_spec_says() {
        let funnel = Funnel::default_funnel();
        assert!(funnel.steps[1].fits(EventType::MessageSent, Some(Sender::Bot), None));
        assert!(!funnel.steps[1].fits(EventType::MessageSent, Some(Sender::Campaign), None));
        assert!(funnel.steps[3].fits(EventType::Conversion, None, Some("lead")));
        assert!(!funnel.steps[3].fits(EventType::Conversion, None, Some("purchase")));
        assert!(!funnel.concerns(EventType::Touch, None, None));
    }

    #[test]
    fn entries_are_validated_with_named_errors() {
        let parse = |json: &str| serde_json::from_str::<FunnelEntry>(json).unwrap().into_funnel();
        let funnel = parse(r#"{"funnel_id":"f","window":"36h","steps":[{"type":"message.sent","sender":"campaign"},{"type":"conversion"}]}"#).unwrap();
        assert_eq!(funnel.window_ms, 36 * 3_600_000);
        assert_eq!(funnel.steps[0].senders, vec![Sender::Campaign]);
        assert!(parse(r#"{"funnel_id":"f","steps":[{"type":"message.seen"}]}"#)
            .unwrap_err()
            .contains("step 1: unknown type `message.seen`"));
        assert!(parse(r#"{"funnel_id":"f","steps":[{"type":"touch","sender":"bot"}]}"#)
            .unwrap_err()
            .contains("only to message.sent"));
        assert!(parse(r#"{"funnel_id":"f","window":"2 weeks","steps":[{"type":"touch"}]}"#)
            .unwrap_err()
            .contains("bad window"));
        assert!(parse(r#"{"funnel_id":"f","steps":[]}"#).unwrap_err().contains("no steps"));
    }
}
