//! `${VAR}` and `${VAR:-default}` in the config file's strings, replaced
//! from the environment before the file is deserialised, so that secrets
//! can live there rather than in the file (`$${` is a literal `${`).

use super::ConfigError;

/// Replaces `${VAR}` and `${VAR:-default}` in the strings of `value`
/// (whose dotted key is `key`) with what `lookup` gives.
pub(super) fn expand_variables(
    value: &mut toml::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) => *text = expand_string(text, key, lookup)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_variables(item, key, lookup)?;
            }
        }
        toml::Value::Table(table) => {
            for (name, item) in table.iter_mut() {
                expand_variables(item, &format!("{key}.{name}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_string(
    text: &str,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(inner) = after.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| ConfigError::UnclosedVariable {
                    key: key.to_owned(),
                })?;
            let (name, default) = match inner[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&inner[..end], None),
            };
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(ConfigError::UnsetVariable {
                        key: key.to_owned(),
                        variable: name.to_owned(),
                    });
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_from_the_environment() {
        let env = |name: &str| match name {
            "SECRET" => Some("s3cr3t".to_owned()),
            _ => None,
        };
        let expand = |text: &str| expand_string(text, "storage.key", &env);
        assert_eq!(expand("${SECRET}").expect("set"), "s3cr3t");
        assert_eq!(expand("a-${SECRET}-b").expect("set"), "a-s3cr3t-b");
        assert_eq!(expand("${MISSING:-fallback}").expect("default"), "fallback");
        assert_eq!(expand("${SECRET:-fallback}").expect("set wins"), "s3cr3t");
        assert_eq!(
            expand("$${SECRET} costs $5").expect("literal"),
            "${SECRET} costs $5"
        );
        let err = expand("${MISSING}").expect_err("unset");
        assert!(err.to_string().contains("MISSING"), "{err}");
        assert!(err.to_string().contains("storage.key"), "{err}");
        assert!(expand("${SECRET").is_err());
    }
}
