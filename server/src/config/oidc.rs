//! `[oidc]`: CI jobs trade an OpenID Connect ID token for a short-lived
//! token of ours, so that no long-lived secret sits in CI settings.
//!
//! Each `[[oidc.issuers]]` names an issuer (whose discovery document and
//! JWKS the server fetches), the audience its tokens must carry, and
//! `[[oidc.issuers.rules]]`: claim matchers, the grants of a token minted
//! when they all match, and its validity. The first matching rule wins.
//! Parsed here into [`OidcIssuer`]s, checked key by key.

use std::collections::BTreeMap;
use std::time::Duration;

use attic_token::{CacheNamePattern, Permission};
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Validity of a minted token when a rule does not say.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(60 * 60);

/// Longest validity a rule may give: a CI job that runs longer exchanges
/// a fresh ID token.
pub const MAX_VALIDITY: Duration = Duration::from_secs(24 * 60 * 60);

/// `[oidc]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OidcConfig {
    /// The issuers whose ID tokens are exchanged.
    #[serde(default)]
    pub issuers: Vec<OidcIssuerConfig>,
}

/// `[[oidc.issuers]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OidcIssuerConfig {
    /// The issuer URL, exactly as its tokens' `iss` says, e.g.
    /// `https://token.actions.githubusercontent.com`.
    pub issuer: String,
    /// What the tokens' `aud` must contain, e.g. this server's URL.
    pub audience: String,
    /// Claims to grants; the first rule that matches decides.
    #[serde(default)]
    pub rules: Vec<OidcRuleConfig>,
}

/// `[[oidc.issuers.rules]]`: every matcher given must match (`*` matches
/// any run of characters), and the minted token grants the permissions
/// listed, each on its cache-name patterns, as `atticadm make-token` does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OidcRuleConfig {
    /// GitHub Actions: `owner/name` of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// GitHub Actions and GitLab CI: the git ref, e.g. `refs/heads/main`
    /// (GitHub) or `main` (GitLab).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// GitHub Actions: the deployment environment of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// GitLab CI: `group/project` of the project (claim `project_path`;
    /// the key may be spelt either way).
    #[serde(
        default,
        alias = "project_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub project_path: Option<String>,
    /// Any other string claim, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
    /// Cache patterns the token may pull from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<String>,
    /// Cache patterns the token may push to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<String>,
    /// Cache patterns the token may delete paths from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    /// Cache patterns the token may create caches under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_cache: Vec<String>,
    /// Cache patterns the token may configure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configure_cache: Vec<String>,
    /// Cache patterns whose retention the token may configure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configure_cache_retention: Vec<String>,
    /// Cache patterns the token may destroy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destroy_cache: Vec<String>,
    /// How long a minted token lives: default 1 hour, at most 24 hours.
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub validity: Option<Duration>,
}

mod optional_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => super::super::duration::serialize(value, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::super::duration::deserialize(d).map(Some)
    }
}

/// An issuer, checked: what the exchange needs.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// The issuer URL, compared exactly with `iss`.
    pub issuer: String,
    /// The audience `aud` must contain.
    pub audience: String,
    /// The rules, in order.
    pub rules: Vec<OidcRule>,
}

impl OidcIssuer {
    /// Where its discovery document is: `/.well-known/openid-configuration`
    /// under the issuer URL.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }

    /// The host of the issuer URL, which names minted tokens' subjects.
    pub fn host(&self) -> &str {
        let rest = self.issuer.split_once("://").map_or("", |(_, rest)| rest);
        rest.split('/').next().unwrap_or_default()
    }
}

/// A rule, checked.
#[derive(Debug, Clone)]
pub struct OidcRule {
    /// (claim name, pattern): all must match.
    pub matchers: Vec<(String, String)>,
    /// What a minted token grants.
    pub grants: Vec<(CacheNamePattern, Permission)>,
    /// How long a minted token lives.
    pub validity: Duration,
}

impl OidcRule {
    /// Whether every matcher matches a string claim `claim` returns.
    pub fn matches<'a>(&self, claim: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matchers.iter().all(|(name, pattern)| {
            claim(name).is_some_and(|value| attic_token::oidc::claim_matches(pattern, value))
        })
    }
}

fn invalid(key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidAt {
        key,
        reason: reason.into(),
    }
}

impl OidcConfig {
    /// Whether the section is absent.
    pub fn is_unset(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The issuers, checked key by key; an error names the key, e.g.
    /// `oidc.issuers[0].rules[1].push`.
    pub fn resolve(&self) -> Result<Vec<OidcIssuer>, ConfigError> {
        let mut issuers: Vec<OidcIssuer> = Vec::new();
        for (i, config) in self.issuers.iter().enumerate() {
            let key = |name: &str| format!("oidc.issuers[{i}].{name}");
            check_issuer_url(&config.issuer).map_err(|reason| invalid(key("issuer"), reason))?;
            if issuers.iter().any(|other| other.issuer == config.issuer) {
                return Err(invalid(
                    key("issuer"),
                    format!("{:?} is listed twice", config.issuer),
                ));
            }
            if config.audience.trim().is_empty() || has_control(&config.audience) {
                return Err(invalid(key("audience"), "must be a non-empty string"));
            }
            if config.rules.is_empty() {
                return Err(invalid(
                    key("rules"),
                    "the issuer has no rules, so every token of it would be refused",
                ));
            }
            let rules = config
                .rules
                .iter()
                .enumerate()
                .map(|(r, rule)| rule.resolve(&key(&format!("rules[{r}]"))))
                .collect::<Result<_, _>>()?;
            issuers.push(OidcIssuer {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
                rules,
            });
        }
        Ok(issuers)
    }
}

impl OidcRuleConfig {
    fn resolve(&self, prefix: &str) -> Result<OidcRule, ConfigError> {
        let key = |name: &str| format!("{prefix}.{name}");
        let mut matchers = Vec::new();
        for (name, pattern) in [
            ("repository", &self.repository),
            ("ref", &self.git_ref),
            ("environment", &self.environment),
            ("project_path", &self.project_path),
        ] {
            if let Some(pattern) = pattern {
                matchers.push((name.to_owned(), pattern.clone()));
            }
        }
        for (name, pattern) in &self.claims {
            if name.is_empty() || has_control(name) {
                return Err(invalid(
                    key("claims"),
                    "a claim name must be non-empty text",
                ));
            }
            if matchers.iter().any(|(other, _)| other == name) {
                return Err(invalid(
                    key(&format!("claims.{name}")),
                    format!("the claim {name:?} is matched twice"),
                ));
            }
            matchers.push((name.clone(), pattern.clone()));
        }
        if matchers.is_empty() {
            return Err(invalid(
                prefix.to_owned(),
                "a rule must match at least one claim (repository, ref, environment, \
                 project_path or claims.NAME): anyone can get a token for any audience \
                 from a public CI issuer",
            ));
        }
        for (name, pattern) in &matchers {
            if pattern.is_empty() || has_control(pattern) {
                return Err(invalid(
                    key(name),
                    "a claim pattern must be non-empty text (use \"*\" to require only that the claim is present)",
                ));
            }
        }
        let mut grants = Vec::new();
        for (name, permission, patterns) in [
            ("pull", Permission::Pull, &self.pull),
            ("push", Permission::Push, &self.push),
            ("delete", Permission::Delete, &self.delete),
            ("create-cache", Permission::CreateCache, &self.create_cache),
            (
                "configure-cache",
                Permission::ConfigureCache,
                &self.configure_cache,
            ),
            (
                "configure-cache-retention",
                Permission::ConfigureCacheRetention,
                &self.configure_cache_retention,
            ),
            (
                "destroy-cache",
                Permission::DestroyCache,
                &self.destroy_cache,
            ),
        ] {
            for pattern in patterns {
                let pattern: CacheNamePattern =
                    pattern
                        .parse()
                        .map_err(|e: attic_token::BadCacheNamePattern| {
                            invalid(key(name), e.to_string())
                        })?;
                grants.push((pattern, permission));
            }
        }
        if grants.is_empty() {
            return Err(invalid(
                prefix.to_owned(),
                "a rule must grant something: pull, push, delete, create-cache, \
                 configure-cache, configure-cache-retention or destroy-cache",
            ));
        }
        let validity = self.validity.unwrap_or(DEFAULT_VALIDITY);
        if validity.is_zero() || validity > MAX_VALIDITY {
            return Err(invalid(
                key("validity"),
                format!(
                    "{} is outside 1s..=24h",
                    humantime::format_duration(validity)
                ),
            ));
        }
        Ok(OidcRule {
            matchers,
            grants,
            validity,
        })
    }
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// An issuer URL: `https://`, or `http://` on a loopback host only (a
/// test's local issuer: keys fetched over plain HTTP from anywhere else
/// could be swapped on the way); no query, fragment or credentials.
pub(crate) fn check_issuer_url(url: &str) -> Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let host_port = rest.split('/').next().unwrap_or_default();
    if host_port.is_empty() || url.contains(['?', '#', '@']) || has_control(url) {
        return Err(format!(
            "{url:?} must be a plain URL: a host, an optional path, no query, fragment or credentials"
        ));
    }
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    match scheme {
        "https" => Ok(()),
        "http" if ["127.0.0.1", "::1", "localhost"].contains(&host) => Ok(()),
        "http" => Err(format!(
            "{url:?} is plain http: an issuer's keys must come over https \
             (http is accepted for loopback addresses only, for tests)"
        )),
        _ => Err(format!("{url:?} is not an https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{key_line, parse};

    fn github(rules: &str) -> String {
        format!(
            "{}[[oidc.issuers]]\nissuer = \"https://token.actions.githubusercontent.com\"\n\
             audience = \"https://cache.example.com\"\n{rules}",
            key_line()
        )
    }

    #[test]
    fn a_github_issuer_with_rules_parses_in_order() {
        let text = github(
            "[[oidc.issuers.rules]]\nrepository = \"acme/app\"\nref = \"refs/heads/main\"\n\
             push = [\"acme-*\"]\npull = [\"acme-*\"]\nvalidity = \"2h\"\n\
             [[oidc.issuers.rules]]\nrepository = \"acme/*\"\nclaims.event_name = \"push\"\npull = [\"acme\"]\n",
        );
        let config = parse(&text).expect("parses");
        let issuers = config.oidc.resolve().expect("valid");
        assert_eq!(issuers.len(), 1);
        let issuer = &issuers[0];
        assert_eq!(
            issuer.discovery_url(),
            "https://token.actions.githubusercontent.com/.well-known/openid-configuration"
        );
        assert_eq!(issuer.host(), "token.actions.githubusercontent.com");
        assert_eq!(issuer.rules[0].validity.as_secs(), 7200);
        assert_eq!(issuer.rules[0].grants.len(), 2);
        assert_eq!(issuer.rules[1].validity, super::DEFAULT_VALIDITY);
        let claims = |name: &str| match name {
            "repository" => Some("acme/lib"),
            "event_name" => Some("push"),
            _ => None,
        };
        assert!(!issuer.rules[0].matches(claims));
        assert!(issuer.rules[1].matches(claims));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_key() {
        let cases = [
            ("[[oidc.issuers.rules]]\npush = [\"a\"]\n", "rules[0]"),
            ("[[oidc.issuers.rules]]\nrepository = \"a/b\"\n", "rules[0]"),
            (
                "[[oidc.issuers.rules]]\nrepository = \"a/b\"\npush = [\"bad name!\"]\n",
                "rules[0].push",
            ),
            (
                "[[oidc.issuers.rules]]\nrepository = \"a/b\"\npull = [\"a\"]\nvalidity = \"2d\"\n",
                "rules[0].validity",
            ),
            (
                "[[oidc.issuers.rules]]\nrepository = \"a/b\"\nclaims.repository = \"c\"\npull = [\"a\"]\n",
                "rules[0].claims.repository",
            ),
            (
                "[[oidc.issuers.rules]]\nref = \"\"\npull = [\"a\"]\n",
                "rules[0].ref",
            ),
            ("", "oidc.issuers[0].rules"),
        ];
        for (rules, key) in cases {
            let err = parse(&github(rules)).expect_err(rules);
            assert!(err.to_string().contains(key), "{rules}: {err}");
        }
        let err = parse(&github(
            "[[oidc.issuers.rules]]\nrepository = \"a\"\npull = [\"a\"]\nbranch = \"x\"\n",
        ))
        .expect_err("unknown key");
        assert!(err.to_string().contains("branch"), "{err}");
    }

    #[test]
    fn issuers_must_be_https_but_for_loopback() {
        let rule = "[[oidc.issuers.rules]]\nrepository = \"a\"\npull = [\"a\"]\n";
        let with = |issuer: &str| {
            parse(&format!(
                "{}[[oidc.issuers]]\nissuer = \"{issuer}\"\naudience = \"x\"\n{rule}",
                key_line()
            ))
        };
        with("http://127.0.0.1:8123").expect("loopback over http");
        with("http://localhost:8123/issuer").expect("loopback over http");
        with("https://gitlab.example.com").expect("https");
        for bad in [
            "http://gitlab.example.com",
            "ftp://x",
            "https://x?y=1",
            "https://u:p@x",
            "gitlab.example.com",
        ] {
            let err = with(bad).expect_err(bad);
            assert!(
                err.to_string().contains("oidc.issuers[0].issuer"),
                "{bad}: {err}"
            );
        }
    }
}
