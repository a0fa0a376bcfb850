use std::time::{Duration, SystemTime};

use super::*;

fn name(s: &str) -> CacheName {
    s.parse().expect("valid cache name")
}

fn pattern(s: &str) -> CacheNamePattern {
    s.parse().expect("valid pattern")
}

fn spec(grants: &[(&str, Permission)]) -> TokenSpec {
    TokenSpec {
        subject: "ci".into(),
        expires_at: None,
        grants: grants.iter().map(|(p, perm)| (pattern(p), *perm)).collect(),
    }
}

#[test]
fn patterns_match_like_globs() {
    assert!(pattern("*").matches(&name("anything")));
    assert!(pattern("team-*").matches(&name("team-a")));
    assert!(pattern("team-*").matches(&name("team-")));
    assert!(!pattern("team-*").matches(&name("teamx")));
    assert!(pattern("a*c").matches(&name("abbbc")));
    assert!(!pattern("a").matches(&name("ab")));
    for bad in ["", "a/b", "a.b", "a b", "^a$"] {
        assert!(bad.parse::<CacheNamePattern>().is_err(), "{bad:?}");
    }
}

#[test]
fn grants_only_what_it_says() {
    let root = RootKey::generate();
    let token = spec(&[("team-*", Permission::Pull), ("team-a", Permission::Push)])
        .sign(&root)
        .expect("sign");
    let token = Token::parse(&token.to_base64().expect("b64"), &root.public()).expect("parse");
    token
        .authorize(&name("team-a"), Permission::Pull)
        .expect("pull team-a");
    token
        .authorize(&name("team-b"), Permission::Pull)
        .expect("pull team-b");
    token
        .authorize(&name("team-a"), Permission::Push)
        .expect("push team-a");
    assert!(matches!(
        token.authorize(&name("team-b"), Permission::Push),
        Err(TokenError::Denied { .. })
    ));
    assert!(matches!(
        token.authorize(&name("other"), Permission::Pull),
        Err(TokenError::Denied { .. })
    ));
    assert!(matches!(
        token.authorize(&name("team-a"), Permission::DestroyCache),
        Err(TokenError::Denied { .. })
    ));
    assert_eq!(token.subject().as_deref(), Some("ci"));
}

#[test]
fn rejects_tokens_of_another_root_or_tampered() {
    let root = RootKey::generate();
    let other = RootKey::generate();
    let text = spec(&[("*", Permission::Pull)])
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("b64");
    assert!(matches!(
        Token::parse(&text, &other.public()),
        Err(TokenError::Invalid(_))
    ));
    let mut bytes = text.into_bytes();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    assert!(matches!(
        Token::parse(&tampered, &root.public()),
        Err(TokenError::Invalid(_))
    ));
    assert!(matches!(
        Token::parse("not a token", &root.public()),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn expired_tokens_are_refused_as_expired() {
    let root = RootKey::generate();
    let mut expired = spec(&[("*", Permission::Pull)]);
    expired.expires_at = Some(SystemTime::now() - Duration::from_secs(60));
    let token = expired.sign(&root).expect("sign");
    assert!(matches!(
        token.authorize(&name("a"), Permission::Pull),
        Err(TokenError::Expired)
    ));
    assert!(matches!(token.check_expiry(), Err(TokenError::Expired)));
    let mut valid = spec(&[("*", Permission::Pull)]);
    valid.expires_at = Some(SystemTime::now() + Duration::from_secs(3600));
    let valid = valid.sign(&root).expect("sign");
    valid
        .authorize(&name("a"), Permission::Pull)
        .expect("valid");
    valid.check_expiry().expect("not expired");
    // A token narrowed to other caches is still unexpired.
    let narrowed = attenuate(
        &valid.to_base64().expect("b64"),
        &Attenuation {
            caches: Some(vec![pattern("b")]),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    Token::parse(&narrowed, &root.public())
        .expect("verifies")
        .check_expiry()
        .expect("a cache check is not an expiry");
}

#[test]
fn attenuation_narrows_and_never_widens() {
    let root = RootKey::generate();
    let parent = spec(&[("team-*", Permission::Pull), ("team-*", Permission::Push)])
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("b64");

    // Narrow to team-a, pull only.
    let narrow = attenuate(
        &parent,
        &Attenuation {
            caches: Some(vec![pattern("team-a")]),
            permissions: Some(vec![Permission::Pull]),
            expires_at: None,
        },
    )
    .expect("attenuate");
    let narrow = Token::parse(&narrow, &root.public()).expect("still verifies");
    narrow
        .authorize(&name("team-a"), Permission::Pull)
        .expect("pull team-a");
    assert!(narrow.authorize(&name("team-a"), Permission::Push).is_err());
    assert!(narrow.authorize(&name("team-b"), Permission::Pull).is_err());

    // Asking for more than the parent has grants nothing extra.
    let wider = attenuate(
        &parent,
        &Attenuation {
            caches: Some(vec![pattern("*")]),
            permissions: Some(vec![Permission::DestroyCache, Permission::Pull]),
            expires_at: None,
        },
    )
    .expect("attenuate");
    let wider = Token::parse(&wider, &root.public()).expect("verifies");
    assert!(wider.authorize(&name("other"), Permission::Pull).is_err());
    assert!(
        wider
            .authorize(&name("team-a"), Permission::DestroyCache)
            .is_err()
    );
    wider
        .authorize(&name("team-a"), Permission::Pull)
        .expect("parent's right remains");

    // An expiry in the past, added offline, kills the token.
    let dead = attenuate(
        &parent,
        &Attenuation {
            expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    let dead = Token::parse(&dead, &root.public()).expect("verifies");
    assert!(matches!(
        dead.authorize(&name("team-a"), Permission::Pull),
        Err(TokenError::Expired)
    ));
}

#[test]
fn a_block_cannot_forge_rights() {
    // A holder appends a block asserting a right; the authorizer's policy
    // only trusts the authority block, so it grants nothing.
    let root = RootKey::generate();
    let token = spec(&[("a", Permission::Pull)]).sign(&root).expect("sign");
    let forged = token
        .0
        .append(
            BlockBuilder::new()
                .code(r#"right("^.*$", "destroy_cache");"#)
                .expect("datalog"),
        )
        .expect("append");
    let forged = Token(forged);
    assert!(
        forged
            .authorize(&name("b"), Permission::DestroyCache)
            .is_err()
    );
}

#[test]
fn revocation_ids_cover_attenuated_children() {
    let root = RootKey::generate();
    let parent = spec(&[("*", Permission::Pull)]).sign(&root).expect("sign");
    let child =
        attenuate(&parent.to_base64().expect("b64"), &Attenuation::default()).expect("attenuate");
    let child = Token::parse(&child, &root.public()).expect("verifies");
    let parent_ids = parent.revocation_ids();
    assert_eq!(parent_ids.len(), 1);
    assert!(child.revocation_ids().contains(&parent_ids[0]));
}

#[test]
fn revoking_an_attenuated_token_spares_its_parent_and_siblings() {
    let root = RootKey::generate();
    let parent = spec(&[("*", Permission::Pull)]).sign(&root).expect("sign");
    let parent_text = parent.to_base64().expect("b64");
    let narrow = |text: &str| {
        let child = attenuate(text, &Attenuation::default()).expect("attenuate");
        Token::parse(&child, &root.public()).expect("verifies")
    };
    let child = narrow(&parent_text);
    let sibling = narrow(&parent_text);
    let grandchild = narrow(&child.to_base64().expect("b64"));
    let revoked = child.own_revocation_id();
    assert!(child.revocation_ids().contains(&revoked));
    assert!(grandchild.revocation_ids().contains(&revoked));
    assert!(!parent.revocation_ids().contains(&revoked));
    assert!(!sibling.revocation_ids().contains(&revoked));
}

#[test]
fn oversized_tokens_are_refused_before_costly_work() {
    let root = RootKey::generate();
    let token = spec(&[("a", Permission::Pull)]).sign(&root).expect("sign");
    // One appended block of 15 KB of facts, as a hostile holder could make.
    let facts: String = (0..600)
        .map(|i| format!("junk({i}, \"{i:0>12}\");\n"))
        .collect();
    let fat = token
        .0
        .append(BlockBuilder::new().code(facts.as_str()).expect("datalog"))
        .expect("append")
        .to_base64()
        .expect("b64");
    assert!(fat.len() > MAX_TOKEN_LEN);
    assert!(matches!(
        Token::parse(&fat, &root.public()),
        Err(TokenError::TooLarge)
    ));
    // Many small blocks.
    let mut text = token.to_base64().expect("b64");
    for _ in 0..MAX_BLOCKS {
        text = attenuate(&text, &Attenuation::default()).expect("attenuate");
    }
    assert!(text.len() <= MAX_TOKEN_LEN, "{}", text.len());
    assert!(matches!(
        Token::parse(&text, &root.public()),
        Err(TokenError::TooLarge)
    ));
}

#[test]
fn a_token_whose_datalog_explodes_is_refused_not_evaluated_at_length() {
    let root = RootKey::generate();
    let token = spec(&[("a", Permission::Pull)]).sign(&root).expect("sign");
    // A small block whose rules derive far more facts than any real token.
    let block = BlockBuilder::new()
        .code(
            "n(0); n(1); n(2); n(3); n(4); n(5); n(6); n(7); n(8); n(9);\n\
             p($a, $b, $c) <- n($a), n($b), n($c);",
        )
        .expect("datalog");
    let hostile = Token(token.0.append(block).expect("append"));
    assert!(matches!(
        hostile.authorize(&name("a"), Permission::Pull),
        Err(TokenError::TooComplex)
    ));
}

#[test]
fn root_key_round_trips_through_config() {
    let root = RootKey::generate();
    let again = RootKey::parse(&root.to_config_string()).expect("parses");
    assert_eq!(again.public(), root.public());
    assert!(RootKey::parse("ed25519-private/zz").is_err());
    assert!(!format!("{root:?}").contains(&root.to_config_string()));
}

#[test]
fn permissions_parse_with_either_separator() {
    assert_eq!(
        "create-cache".parse::<Permission>(),
        Ok(Permission::CreateCache)
    );
    assert_eq!(
        "configure_cache_retention".parse::<Permission>(),
        Ok(Permission::ConfigureCacheRetention)
    );
    assert!("admin".parse::<Permission>().is_err());
}
