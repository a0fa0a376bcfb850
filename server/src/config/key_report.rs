//! What `atticd --mode check-config` says of each key a file sets: that it
//! was read, and for Attic's keys whose spelling or meaning needs saying,
//! what it maps to here. A file that reaches this point parsed and
//! validated; what cannot be honoured was refused before, naming the key.

use super::{CompressionKind, ServerConfig};

/// One line per key the file sets, sorted by dotted path (e.g.
/// `chunking.nar-size-threshold`), then the defaults that differ from
/// Attic's for keys the file leaves out.
pub fn describe_keys(text: &str, config: &ServerConfig) -> Vec<String> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    flatten("", &table, &mut keys);
    let mut lines: Vec<String> = keys
        .iter()
        .map(|key| match meaning(key, config) {
            Some(meaning) => format!("read `{key}`: {meaning}"),
            None => format!("read `{key}`"),
        })
        .collect();
    let set = |key: &str| keys.iter().any(|k| k == key);
    if config.compression.kind == CompressionKind::Zstd && !set("compression.level") {
        lines.push(
            "default `compression.level`: zstd level 3 (Attic's default is 8; set it to keep Attic's)"
                .to_owned(),
        );
    }
    if !set("garbage-collection.default-retention-period") {
        lines.push(
            "default `garbage-collection.default-retention-period`: 0, paths are kept for ever \
             unless their cache sets a retention period (as in Attic)"
                .to_owned(),
        );
    }
    lines
}

/// Every leaf key of `table`, dotted, in the table's (sorted) order.
fn flatten(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, keys),
            _ => keys.push(key),
        }
    }
}

/// What a key means here, where that needs saying.
fn meaning(key: &str, config: &ServerConfig) -> Option<String> {
    let chunking = &config.chunking;
    Some(match key {
        "chunking.nar-size-threshold" => match chunking.nar_size_threshold {
            0 => format!(
                "0: chunking is off for new NARs; each is stored as fixed pieces of \
                 chunking.max-size ({} bytes)",
                chunking.max_size
            ),
            1 => "1: every new NAR is chunked".to_owned(),
            threshold => format!(
                "new NARs smaller than {threshold} bytes are stored as one chunk, larger ones chunked"
            ),
        },
        "compression.type" | "compression.level" => format!(
            "new chunks are stored as {} at level {}",
            config.compression.kind.as_str(),
            config.compression.level()
        ),
        "garbage-collection.default-retention-period" => {
            match config.garbage_collection.default_retention_period.as_secs() {
                0 => "0: paths are kept for ever unless their cache sets a retention period"
                    .to_owned(),
                _ => format!(
                    "paths unread for {} go, unless their cache sets its own period",
                    humantime::format_duration(
                        config.garbage_collection.default_retention_period
                    )
                ),
            }
        }
        "garbage-collection.interval" => match config.garbage_collection.interval.as_secs() {
            0 => "0: no periodic collection (run `atticd --mode garbage-collector-once` or `atticadm gc`)".to_owned(),
            _ => format!(
                "monolithic and garbage-collector mode collect every {}",
                humantime::format_duration(config.garbage_collection.interval)
            ),
        },
        "database.heartbeat" => match config.database.heartbeat {
            true => "a ping (`SELECT 1`) every minute keeps a pooled connection in use".to_owned(),
            false => "no heartbeat".to_owned(),
        },
        "soft-delete-caches" => match config.soft_delete_caches {
            true => "a destroyed cache's name stays reserved (its paths stop being served at once)"
                .to_owned(),
            false => "a destroyed cache's name is free again at once".to_owned(),
        },
        "require-proof-of-possession" => match config.require_proof_of_possession {
            true => "attaching a stored NAR needs its whole body".to_owned(),
            false => "a stored NAR is attached on its hash alone, without the body \
                      (see the book's Security page)"
                .to_owned(),
        },
        "max-nar-info-size" => format!(
            "an upload-path metadata preamble may be at most {} bytes",
            config.max_nar_info_size
        ),
        "substituter-endpoint" => "clients are told a cache's substituter is \
                                   <substituter-endpoint><cache>"
            .to_owned(),
        "storage.credentials.access_key_id" => {
            "Attic's spelling of `storage.credentials.access-key-id`".to_owned()
        }
        "storage.credentials.secret_access_key" => {
            "Attic's spelling of `storage.credentials.secret-access-key`".to_owned()
        }
        "database.url" => "the database; checked below, shown without its password".to_owned(),
        "jwt.signing.token-hs256-secret-base64"
        | "jwt.signing.token-rs256-secret-base64"
        | "jwt.signing.token-rs256-pubkey-base64" => {
            "Attic's JWTs signed with this key are accepted beside biscuit tokens \
             (see the token lines below)"
                .to_owned()
        }
        "jwt.token-bound-issuer" => "a JWT must carry this `iss`".to_owned(),
        "jwt.token-bound-audiences" => "a JWT's `aud` must hold one of these".to_owned(),
        "jwt.blacklist.subjects" => "tokens of these subjects are refused".to_owned(),
        "oidc.issuers" => describe_oidc_issuers(config),
        _ => return None,
    })
}

/// One clause per issuer: whose ID tokens `POST /_api/v1/oidc/exchange`
/// takes, for which audience, and what each rule grants.
fn describe_oidc_issuers(config: &ServerConfig) -> String {
    let Ok(issuers) = config.oidc.resolve() else {
        return String::new();
    };
    let described: Vec<String> = issuers
        .iter()
        .map(|issuer| {
            let rules: Vec<String> = issuer
                .rules
                .iter()
                .map(|rule| {
                    let when: Vec<String> = rule
                        .matchers
                        .iter()
                        .map(|(claim, pattern)| format!("{claim}={pattern}"))
                        .collect();
                    let grants: Vec<String> = rule
                        .grants
                        .iter()
                        .map(|(pattern, permission)| format!("{permission} {}", pattern.as_str()))
                        .collect();
                    format!(
                        "[{}] grants [{}] for {}",
                        when.join(", "),
                        grants.join(", "),
                        humantime::format_duration(rule.validity)
                    )
                })
                .collect();
            format!(
                "ID tokens of {} for audience {:?} are exchanged by the first matching rule of: {}",
                issuer.issuer,
                issuer.audience,
                rules.join("; ")
            )
        })
        .collect();
    described.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::describe_keys;
    use crate::config::test_support::{key_line, parse};

    #[test]
    fn each_key_set_is_listed_with_attics_meaning_where_it_needs_saying() {
        let text = format!(
            "{}soft-delete-caches = true\n[chunking]\nnar-size-threshold = 0\n\
             [compression]\ntype = \"xz\"\n[database]\nheartbeat = true\n",
            key_line()
        );
        let config = parse(&text).expect("parses");
        let lines = describe_keys(&text, &config);
        let find = |key: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("`{key}`")))
                .unwrap_or_else(|| panic!("{key} missing from {lines:#?}"))
                .clone()
        };
        assert!(find("token-root-key").starts_with("read"));
        assert!(find("soft-delete-caches").contains("reserved"));
        assert!(find("chunking.nar-size-threshold").contains("fixed pieces"));
        assert!(find("compression.type").contains("xz at level 2"));
        assert!(find("database.heartbeat").contains("every minute"));
        assert!(find("garbage-collection.default-retention-period").contains("for ever"));
    }

    #[test]
    fn oidc_issuers_are_listed_with_their_rules() {
        let text = format!(
            "{}[[oidc.issuers]]\nissuer = \"https://gitlab.example.com\"\naudience = \"https://cache\"\n\
             [[oidc.issuers.rules]]\nproject_path = \"acme/*\"\npush = [\"acme\"]\n",
            key_line()
        );
        let config = parse(&text).expect("parses");
        let lines = describe_keys(&text, &config);
        let line = lines
            .iter()
            .find(|l| l.contains("`oidc.issuers`"))
            .unwrap_or_else(|| panic!("oidc.issuers missing from {lines:#?}"));
        assert!(line.contains("https://gitlab.example.com"), "{line}");
        assert!(line.contains("project_path=acme/*"), "{line}");
        assert!(line.contains("push acme"), "{line}");
        assert!(line.contains("1h"), "{line}");
    }
}
