//! Tenants (SPEC §4): a JSON file of `[{"tenant_id", "timezone", "phone_number_ids", "funnels"}]`.
//! A tenant missing from the file gets the defaults (UTC).

use chrono_tz::Tz;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

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
}

/// One tenant's configuration.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub tenant_id: String,
    pub timezone: Tz,
    pub phone_number_ids: Vec<String>,
    /// Funnel definitions, kept as given until the funnel operator reads them.
    pub funnels: Option<serde_json::Value>,
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
    funnels: Option<serde_json::Value>,
    #[serde(default)]
    attribution: Option<serde_json::Value>,
}

/// All configured tenants.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    by_id: HashMap<String, Tenant>,
}

impl Tenants {
    pub fn from_json(text: &str) -> Result<Self, TenantsError> {
        let entries: Vec<TenantEntry> = serde_json::from_str(text)?;
        let mut by_id = HashMap::new();
        for entry in entries {
            let _ = entry.attribution; // read by the attribution operator (issue 4)
            let timezone_name = entry.timezone.unwrap_or_else(|| "UTC".to_owned());
            let timezone: Tz = timezone_name.parse().map_err(|_| TenantsError::Timezone {
                tenant: entry.tenant_id.clone(),
                timezone: timezone_name.clone(),
            })?;
            let tenant = Tenant {
                tenant_id: entry.tenant_id.clone(),
                timezone,
                phone_number_ids: entry.phone_number_ids,
                funnels: entry.funnels,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tenants_default_to_utc() {
        let tenants = Tenants::from_json(r#"[{"tenant_id":"acme","timezone":"Asia/Kolkata"}]"#).unwrap();
        assert_eq!(tenants.timezone("acme"), chrono_tz::Asia::Kolkata);
        assert_eq!(tenants.timezone("other"), Tz::UTC);
    }

    #[test]
    fn bad_timezone_names_the_tenant() {
        let error = Tenants::from_json(r#"[{"tenant_id":"acme","timezone":"Mars/Olympus"}]"#).unwrap_err();
        assert_eq!(error.to_string(), "tenant `acme`: unknown IANA timezone `Mars/Olympus`");
    }
}
