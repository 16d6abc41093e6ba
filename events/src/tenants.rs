//! Tenants (SPEC §4): a JSON file of `[{"tenant_id", "timezone", "phone_number_ids", "funnels",
//! "attribution"}]`. A tenant missing from the file gets the defaults: UTC, the default funnel,
//! a 30-day attribution lookback and a 7-day half-life. `attribution` is
//! `{"lookback": "30d", "half_life": "7d"}` (durations as in `funnels.rs`), either key optional.

use crate::funnels::{Funnel, FunnelEntry};
use crate::time::parse_duration_ms;
use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read tenants file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("tenants file is not valid")]
    Json(#[from] serde_json::Error),
    #[error("tenant `{tenant}`: unknown IANA timezone `{timezone}`")]
    Timezone { tenant: String, timezone: String },
    #[error("tenant `{0}` is listed twice")]
    Duplicate(String),
    #[error("tenant `{tenant}`: {problem}")]
    Invalid { tenant: String, problem: String },
}

/// `attribution` settings of a tenant (SPEC §5.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttributionSettings {
    pub lookback_ms: i64,
    pub half_life_ms: i64,
}

impl Default for AttributionSettings {
    fn default() -> Self {
        AttributionSettings { lookback_ms: 30 * 86_400_000, half_life_ms: 7 * 86_400_000 }
    }
}

/// One tenant's configuration.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub tenant_id: String,
    pub timezone: Tz,
    pub phone_number_ids: Vec<String>,
    /// The configured funnels, or the default funnel when none is configured.
    pub funnels: Vec<Funnel>,
    pub attribution: AttributionSettings,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    tenant_id: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    phone_number_ids: Vec<String>,
    #[serde(default)]
    funnels: Option<Vec<FunnelEntry>>,
    #[serde(default)]
    attribution: Option<AttributionEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttributionEntry {
    #[serde(default)]
    lookback: Option<String>,
    #[serde(default)]
    half_life: Option<String>,
}

impl AttributionEntry {
    fn settings(self) -> Result<AttributionSettings, String> {
        let mut settings = AttributionSettings::default();
        let duration = |key: &str, text: &str| {
            parse_duration_ms(text)
                .ok_or_else(|| format!("attribution.{key}: bad duration `{text}` (expected e.g. 12h, 30d)"))
        };
        if let Some(text) = &self.lookback {
            settings.lookback_ms = duration("lookback", text)?;
        }
        if let Some(text) = &self.half_life {
            settings.half_life_ms = duration("half_life", text)?;
        }
        Ok(settings)
    }
}

static DEFAULT_FUNNELS: LazyLock<Vec<Funnel>> = LazyLock::new(|| vec![Funnel::default_funnel()]);

/// All configured tenants.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    by_id: HashMap<String, Tenant>,
}

impl Tenants {
    /// A digest of the whole configuration, tenants in id order. Persisted operator state is tied
    /// to it: time zones, funnels and attribution settings shape what the operators fold.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut tenants: Vec<&Tenant> = self.by_id.values().collect();
        tenants.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        let mut hasher = std::hash::DefaultHasher::new();
        for tenant in tenants {
            format!("{tenant:?}").hash(&mut hasher);
        }
        hasher.finish()
    }

    pub fn from_json(text: &str) -> Result<Self, TenantsError> {
        let entries: Vec<TenantEntry> = serde_json::from_str(text)?;
        let mut by_id = HashMap::new();
        for entry in entries {
            let invalid = |problem: String| TenantsError::Invalid { tenant: entry.tenant_id.clone(), problem };
            let timezone_name = entry.timezone.clone().unwrap_or_else(|| "UTC".to_owned());
            let timezone: Tz = timezone_name.parse().map_err(|_| TenantsError::Timezone {
                tenant: entry.tenant_id.clone(),
                timezone: timezone_name.clone(),
            })?;
            let funnels = match entry.funnels {
                None => DEFAULT_FUNNELS.clone(),
                Some(list) if list.is_empty() => DEFAULT_FUNNELS.clone(),
                Some(list) => {
                    let funnels = list
                        .into_iter()
                        .map(FunnelEntry::into_funnel)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(invalid)?;
                    if let Some(repeated) = funnels
                        .iter()
                        .enumerate()
                        .find(|(i, f)| funnels[..*i].iter().any(|g| g.funnel_id == f.funnel_id))
                    {
                        return Err(invalid(format!("funnel `{}` is defined twice", repeated.1.funnel_id)));
                    }
                    funnels
                }
            };
            let attribution = entry
                .attribution
                .map_or(Ok(AttributionSettings::default()), AttributionEntry::settings)
                .map_err(invalid)?;
            let tenant = Tenant {
                tenant_id: entry.tenant_id.clone(),
                timezone,
                phone_number_ids: entry.phone_number_ids,
                funnels,
                attribution,
            };
            if by_id.insert(entry.tenant_id.clone(), tenant).is_some() {
                return Err(TenantsError::Duplicate(entry.tenant_id));
            }
        }
        Ok(Tenants { by_id })
    }

    pub fn load(path: &Path) -> Result<Self, TenantsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TenantsError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// The tenant's time zone; UTC for a tenant not in the file.
    pub fn timezone(&self, tenant_id: &str) -> Tz {
        self.by_id.get(tenant_id).map_or(Tz::UTC, |t| t.timezone)
    }

    /// The tenant's funnels; the default funnel for a tenant not in the file.
    pub fn funnels(&self, tenant_id: &str) -> &[Funnel] {
        self.by_id.get(tenant_id).map_or(&DEFAULT_FUNNELS, |t| &t.funnels)
    }

    /// The business numbers (`phone_number_id`) configured for the tenant; empty when none are.
    pub fn phone_number_ids(&self, tenant_id: &str) -> &[String] {
        self.by_id.get(tenant_id).map_or(&[], |t| &t.phone_number_ids)
    }

    /// The tenant owning a business number, if any tenant lists it.
    pub fn tenant_of_number(&self, phone_number_id: &str) -> Option<&str> {
        self.by_id
            .values()
            .find(|t| t.phone_number_ids.iter().any(|n| n == phone_number_id))
            .map(|t| t.tenant_id.as_str())
    }

    pub fn attribution(&self, tenant_id: &str) -> AttributionSettings {
        self.by_id.get(tenant_id).map_or_else(AttributionSettings::default, |t| t.attribution)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tenants_get_the_defaults() {
        let tenants = Tenants::from_json(r#"[{"tenant_id":"acme","timezone":"Asia/Kolkata"}]"#).unwrap();
        assert_eq!(tenants.timezone("acme"), chrono_tz::Asia::Kolkata);
        assert_eq!(tenants.timezone("other"), Tz::UTC);
        assert_eq!(tenants.funnels("acme"), &[Funnel::default_funnel()]);
        assert_eq!(tenants.funnels("other"), &[Funnel::default_funnel()]);
        assert_eq!(tenants.attribution("other"), AttributionSettings::default());
    }

    #[test]
    fn configured_funnels_replace_the_default_and_attribution_is_read() {
        let tenants = Tenants::from_json(
            r#"[{"tenant_id":"acme","funnels":[{"funnel_id":"ads","steps":[{"type":"touch"},{"type":"conversion","name":"purchase"}]}],
                 "attribution":{"half_life":"3d"}}]"#,
        )
        .unwrap();
        let funnels = tenants.funnels("acme");
        assert_eq!(funnels.len(), 1);
        assert_eq!(funnels[0].funnel_id, "ads");
        assert_eq!(
            tenants.attribution("acme"),
            AttributionSettings { lookback_ms: 30 * 86_400_000, half_life_ms: 3 * 86_400_000 }
        );
    }

    #[test]
    fn bad_settings_name_the_tenant_and_the_problem() {
        let error = Tenants::from_json(r#"[{"tenant_id":"acme","timezone":"Mars/Olympus"}]"#).unwrap_err();
        assert_eq!(error.to_string(), "tenant `acme`: unknown IANA timezone `Mars/Olympus`");
        let error = Tenants::from_json(r#"[{"tenant_id":"acme","attribution":{"lookback":"a month"}}]"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tenant `acme`: attribution.lookback: bad duration `a month` (expected e.g. 12h, 30d)"
        );
        let twice = r#"[{"tenant_id":"acme","funnels":[{"funnel_id":"f","steps":[{"type":"touch"}]},{"funnel_id":"f","steps":[{"type":"touch"}]}]}]"#;
        assert_eq!(Tenants::from_json(twice).unwrap_err().to_string(), "tenant `acme`: funnel `f` is defined twice");
    }
}
