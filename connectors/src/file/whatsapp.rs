//! `--format whatsapp` input: one WhatsApp Cloud API webhook POST body per line, normalized
//! (SPEC §3) into canonical NDJSON before it is replayed. The tenants file maps each
//! `phone_number_id` to its tenant; items of numbers no tenant lists are skipped and counted.

use super::InputFile;
use crate::connector::RuntimeError;
use convoflow_events::{normalize_webhook, split_lines, Tenants};
use convoflow_operators::RejectedRow;

#[derive(Default)]
pub struct Normalized {
    pub files: Vec<InputFile>,
    pub rejected: Vec<RejectedRow>,
    pub bodies: u64,
    pub events: u64,
    pub skipped: u64,
}

/// Reads each file whole (a webhook body is a line) and normalizes it.
pub fn normalize_files(files: Vec<InputFile>, tenants: &Tenants, received_at: i64) -> Result<Normalized, RuntimeError> {
    let tenant_of = |number: &str| tenants.tenant_of_number(number).map(str::to_owned);
    let mut out = Normalized::default();
    for mut file in files {
        let bytes = file
            .take_rest()
            .map_err(|source| RuntimeError::Io { what: format!("cannot read input {}", file.name), source })?;
        let mut canonical = Vec::with_capacity(bytes.len() / 2);
        for line in split_lines(&bytes, 1) {
            out.bodies += 1;
            let source = format!("{}:{}", file.name, line.number);
            match normalize_webhook(line.bytes, &tenant_of) {
                Err(error) => out.rejected.push(RejectedRow::new(
                    None,
                    received_at,
                    format!("webhook: {error}"),
                    line.bytes,
                    source,
                )),
                Ok(batch) => {
                    out.skipped += batch.skipped.len() as u64;
                    for item in batch.items {
                        match item {
                            Ok(event) => {
                                out.events += 1;
                                canonical.extend_from_slice(event.to_json().as_bytes());
                                canonical.push(b'\n');
                            }
                            Err(rejected) => out.rejected.push(RejectedRow::new(
                                rejected.tenant_id.as_deref(),
                                received_at,
                                rejected.reason,
                                rejected.raw.as_bytes(),
                                source.clone(),
                            )),
                        }
                    }
                }
            }
        }
        out.files.push(InputFile::from_bytes(file.name, canonical));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_canonical_lines_of_the_numbers_tenant() {
        let tenants =
            Tenants::from_json(r#"[{"tenant_id":"acme","phone_number_ids":["118273645501234"]}]"#).expect("tenants");
        let fixture = |name: &str| {
            std::fs::read(format!("{}/../fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
        };
        let mut bytes = fixture("inbound_text.json").trim_ascii_end().to_vec();
        bytes.push(b'\n');
        bytes.extend_from_slice(b"{not json\n");
        let normalized =
            normalize_files(vec![InputFile::from_bytes("hooks.ndjson", bytes)], &tenants, 0).expect("in memory");
        assert_eq!((normalized.bodies, normalized.events), (2, 1));
        assert_eq!(normalized.rejected.len(), 1);
        assert_eq!(normalized.rejected[0].source, "hooks.ndjson:2");
        let mut file = normalized.files.into_iter().next().expect("one file");
        let text = String::from_utf8(file.take_rest().expect("in memory")).expect("utf-8");
        let event = convoflow_events::parse_event(text.trim_end().as_bytes()).expect("canonical");
        assert_eq!((event.tenant_id.as_str(), event.session_id.as_deref()), ("acme", Some("118273645501234")));

        let nobody =
            normalize_files(vec![InputFile::from_bytes("x", fixture("inbound_text.json"))], &Tenants::default(), 0)
                .expect("in memory");
        assert_eq!((nobody.events, nobody.skipped), (0, 1), "a number no tenant lists is skipped");
    }
}
