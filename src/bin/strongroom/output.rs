//! Output: tables for people, JSON for scripts, times as RFC 3339.

use super::*;

/// Rewrites the named millisecond fields of a JSON object (or of each object in an array) as
/// RFC 3339 text, as the CLI prints every time.
pub(crate) fn times_as_rfc3339(value: &mut serde_json::Value, fields: &[&str]) {
    match value {
        serde_json::Value::Array(items) => {
            for item in items {
                times_as_rfc3339(item, fields);
            }
        }
        serde_json::Value::Object(map) => {
            for field in fields {
                if let Some(slot) = map.get_mut(*field) {
                    if let Some(ms) = slot.as_i64() {
                        *slot = serde_json::Value::String(Timestamp(ms).to_string());
                    }
                }
            }
        }
        _ => {}
    }
}

/// The time fields of a credential's JSON form.
pub(crate) const CREDENTIAL_TIMES: [&str; 3] = ["created_at", "updated_at", "expires_at"];

pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    pub(crate) fn infos(&self, infos: &[CredentialInfo]) {
        if self.json {
            let mut value = serde_json::to_value(infos).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!(
            "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  VER",
            "ID", "NAME", "PROVIDER", "SCOPE", "STATE"
        );
        for i in infos {
            println!(
                "{:<36}  {:<20}  {:<14}  {:<34}  {:<8}  {}",
                i.id,
                i.name,
                i.provider,
                i.scope.to_string(),
                i.state.as_str(),
                i.version
            );
        }
    }

    pub(crate) fn info(
        &self,
        info: &CredentialInfo,
        fields: Option<&BTreeMap<String, SecretString>>,
    ) {
        if self.json {
            let mut value = serde_json::to_value(info).unwrap_or_default();
            times_as_rfc3339(&mut value, &CREDENTIAL_TIMES);
            if let Some(fields) = fields {
                let shown: BTreeMap<&str, &str> = fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.expose_secret()))
                    .collect();
                value["fields"] = serde_json::to_value(shown).unwrap_or_default();
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value).unwrap_or_default()
            );
            return;
        }
        println!("id:          {}", info.id);
        println!("name:        {}", info.name);
        println!("provider:    {} ({})", info.provider, info.handler_type);
        println!("scope:       {}", info.scope);
        println!("state:       {}", info.state);
        println!("version:     {}", info.version);
        if let Some(at) = info.expires_at {
            println!("expires_at:  {at}");
        }
        for (k, v) in &info.metadata {
            println!("meta {k}: {v}");
        }
        match fields {
            Some(fields) => {
                for (k, v) in fields {
                    println!("field {k}: {}", v.expose_secret());
                }
            }
            None => println!("fields:      (hidden; --reveal to print them)"),
        }
    }
}
