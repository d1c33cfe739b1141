//! The layers `figment` merges: the file as TOML, and environment
//! variables whose values stay text.

use figment::value::{Dict, Value};
use figment::{Profile, Provider};

/// Where a value came from, in words: the file's path or the variable.
pub(super) fn layer_name(meta: &figment::Metadata, key: &str) -> String {
    match &meta.source {
        Some(figment::Source::File(path)) => {
            format!("the configuration file {}", path.display())
        }
        _ => format!(
            "the environment variable {}",
            meta.interpolate(&Profile::Default, &[key])
        ),
    }
}

/// A setting's value as text, whatever TOML type it was written as (a
/// string, a number or a boolean); [`Config::set`] parses it.
pub(super) struct Text(pub(super) String);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Environment variables as a configuration layer. Unlike a generic
/// environment layer, values stay text (`007` stays `007`), and an error
/// names the variable.
pub(super) struct Variables {
    values: Dict,
    /// `STOCKADE_` for the prefixed layer; empty for a single variable.
    prefix: &'static str,
    /// The single variable's name.
    single: Option<&'static str>,
}

impl Variables {
    /// `STOCKADE_<KEY>` as `<key>`, except the names in `skip`.
    pub(super) fn prefixed(env: &[(String, String)], prefix: &'static str, skip: &[&str]) -> Self {
        let values = env
            .iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix(prefix)?;
                (!skip.contains(&key))
                    .then(|| (key.to_ascii_lowercase(), Value::from(value.clone())))
            })
            .collect();
        Self {
            values,
            prefix,
            single: None,
        }
    }

    /// One variable read as one key.
    pub(super) fn one(env: &[(String, String)], name: &'static str, key: &str) -> Self {
        let values = env
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, value)| (key.to_owned(), Value::from(value.clone())))
            .collect();
        Self {
            values,
            prefix: "",
            single: Some(name),
        }
    }
}

impl Provider for Variables {
    fn metadata(&self) -> figment::Metadata {
        let (prefix, single) = (self.prefix, self.single);
        figment::Metadata::named("environment variable").interpolater(
            move |_: &Profile, path: &[&str]| match single {
                Some(name) => name.to_owned(),
                None => format!("{prefix}{}", path.join(".").to_ascii_uppercase()),
            },
        )
    }

    fn data(&self) -> Result<figment::value::Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}
