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
        Err(Refusal::Denied)
    ));
    assert!(matches!(
        token.authorize(&name("other"), Permission::Pull),
        Err(Refusal::Denied)
    ));
    assert!(matches!(
        token.authorize(&name("team-a"), Permission::DestroyCache),
        Err(Refusal::Denied)
    ));
    assert_eq!(token.subject(), Some("ci"));
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
        Err(Refusal::Expired)
    ));
    assert!(matches!(token.check_expiry(), Err(Refusal::Expired)));
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
        Err(Refusal::Expired)
    ));
}

#[test]
fn a_block_cannot_forge_rights() {
    // A holder appends a block asserting a right: a fact in an appended
    // block is not a shape attenuation writes, so the token is refused.
    let root = RootKey::generate();
    let token = spec(&[("a", Permission::Pull)]).sign(&root).expect("sign");
    let forged = token
        .biscuit
        .append(
            BlockBuilder::new()
                .code(r#"right("^.*$", "destroy_cache");"#)
                .expect("datalog"),
        )
        .expect("append");
    assert!(matches!(
        Token::from_biscuit(forged),
        Err(TokenError::Unrecognised(_))
    ));
}

/// Appends Datalog to a fresh token and parses the result as the server would.
fn parse_with_block(code: &str) -> Result<Token, TokenError> {
    let root = RootKey::generate();
    let token = spec(&[("*", Permission::Pull)]).sign(&root).expect("sign");
    let text = token
        .biscuit
        .append(BlockBuilder::new().code(code).expect("datalog"))
        .expect("append")
        .to_base64()
        .expect("b64");
    Token::parse(&text, &root.public())
}

#[test]
fn blocks_of_any_other_shape_are_refused_unevaluated() {
    for code in [
        // Rules that derive far more facts than any real token.
        "n(0); n(1); n(2); n(3); n(4); n(5); n(6); n(7); n(8); n(9);\n\
         p($a, $b, $c) <- n($a), n($b), n($c);",
        // Closures nested in closures: seconds of CPU per evaluation.
        "check if [1,2,3,4,5,6,7,8,9,10].all($a -> [1,2,3,4,5,6,7,8,9,10].all(\
         $b -> [1,2,3,4,5,6,7,8,9,10].any($c -> $a + $b + $c == 0 || true)));",
        // The expiry shape, with a different operator or extra terms.
        "check if time($t), $t >= 2000-01-01T00:00:00Z;",
        "check if time($t), $t <= 2999-01-01T00:00:00Z, $t > 0;",
        // A cache check with a regex no pattern writes.
        r#"check if cache($c), $c.matches("^(a+)+$");"#,
        r#"check if cache($c), $c.matches("a.*");"#,
        // The right shapes under other kinds of check.
        r#"check all operation("pull");"#,
        r#"reject if operation("push");"#,
        // Unknown predicates and permissions.
        r#"check if resource("x");"#,
        r#"check if operation("admin");"#,
        "check if true;",
        // Scopes.
        "check if operation(\"pull\") trusting previous;",
    ] {
        assert!(
            matches!(parse_with_block(code), Err(TokenError::Unrecognised(_))),
            "accepted: {code}: {:?}",
            parse_with_block(code).map(|t| t.claims)
        );
    }
}

#[test]
fn every_shape_attenuation_writes_is_accepted() {
    let root = RootKey::generate();
    let parent = spec(&[("team-*", Permission::Pull), ("team-*", Permission::Push)])
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("b64");
    let everything = Attenuation {
        caches: Some(vec![pattern("team-a"), pattern("team-b*")]),
        permissions: Some(vec![Permission::Pull, Permission::Push]),
        expires_at: Some(SystemTime::now() + Duration::from_secs(60)),
    };
    let child = attenuate(&parent, &everything).expect("attenuate");
    let child = Token::parse(&child, &root.public()).expect("accepted");
    child
        .authorize(&name("team-bee"), Permission::Push)
        .expect("within every condition");
    // Attenuating to no caches at all writes `check if false`.
    let nothing = attenuate(
        &parent,
        &Attenuation {
            caches: Some(vec![]),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    let nothing = Token::parse(&nothing, &root.public()).expect("accepted");
    assert!(matches!(
        nothing.authorize(&name("team-a"), Permission::Pull),
        Err(Refusal::Denied)
    ));
}

#[test]
fn an_expired_token_stays_expired_when_attenuated() {
    let root = RootKey::generate();
    let mut expired = spec(&[("*", Permission::Pull)]);
    expired.expires_at = Some(SystemTime::now() - Duration::from_secs(60));
    let text = expired.sign(&root).expect("sign").to_base64().expect("b64");
    let narrowed = attenuate(
        &text,
        &Attenuation {
            permissions: Some(vec![Permission::Pull]),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    let token = Token::parse(&narrowed, &root.public()).expect("parses");
    assert!(matches!(token.check_expiry(), Err(Refusal::Expired)));
}

#[test]
fn patterns_with_many_stars_match_in_linear_time() {
    // Exponential backtracking would not finish this in a lifetime.
    let stars = pattern(&"*a".repeat(24));
    let name: CacheName = format!("{}b", "a".repeat(49)).parse().expect("name");
    assert!(!stars.matches(&name));
    let name: CacheName = "a".repeat(50).parse().expect("name");
    assert!(stars.matches(&name));
    assert!(pattern("*-*-x").matches(&self::name("a-b-c-x")));
    assert!(!pattern("*-*-x").matches(&self::name("a-x")));
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
        .biscuit
        .append(BlockBuilder::new().code(facts.as_str()).expect("datalog"))
        .expect("append")
        .to_base64()
        .expect("b64");
    assert!(fat.len() > MAX_TOKEN_LEN);
    assert!(matches!(
        Token::parse(&fat, &root.public()),
        Err(TokenError::TooLarge)
    ));
    // Many small blocks: attenuation stops at the server's limit and says
    // so, and a token appended past it by other means is refused.
    let mut text = token.to_base64().expect("b64");
    for _ in 1..MAX_BLOCKS {
        text = attenuate(&text, &Attenuation::default()).expect("attenuate");
    }
    assert!(text.len() <= MAX_TOKEN_LEN, "{}", text.len());
    Token::parse(&text, &root.public()).expect("as many blocks as accepted");
    assert!(matches!(
        attenuate(&text, &Attenuation::default()),
        Err(TokenError::AttenuationTooLarge { blocks, .. }) if blocks == MAX_BLOCKS + 1
    ));
    let nine = UnverifiedBiscuit::from_base64(&text)
        .expect("parses")
        .append(BlockBuilder::new())
        .expect("append")
        .to_base64()
        .expect("b64");
    assert!(matches!(
        Token::parse(&nine, &root.public()),
        Err(TokenError::TooLarge)
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

#[test]
fn a_client_reads_the_earliest_expiry_without_the_root_key() {
    let root = RootKey::generate();
    let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let mut with_expiry = spec(&[("*", Permission::Pull)]);
    with_expiry.expires_at = Some(expiry);
    let text = with_expiry
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("b64");
    let stated = read_unverified(&text).expect("readable");
    assert_eq!(stated.expires_at, Some(expiry));
    assert_eq!(stated.subject.as_deref(), Some("ci"));
    // An attenuation to an earlier expiry wins; to a later one does not.
    let earlier = expiry - Duration::from_secs(3600);
    let narrowed = attenuate(
        &text,
        &Attenuation {
            expires_at: Some(earlier),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    assert_eq!(
        read_unverified(&narrowed).and_then(|c| c.expires_at),
        Some(earlier)
    );
    let later = attenuate(
        &text,
        &Attenuation {
            expires_at: Some(expiry + Duration::from_secs(3600)),
            ..Attenuation::default()
        },
    )
    .expect("attenuate");
    assert_eq!(
        read_unverified(&later).and_then(|c| c.expires_at),
        Some(expiry)
    );
    // No expiry, or not a token: nothing to say.
    let forever = spec(&[("*", Permission::Pull)])
        .sign(&root)
        .expect("sign")
        .to_base64()
        .expect("b64");
    assert_eq!(read_unverified(&forever).and_then(|c| c.expires_at), None);
    assert_eq!(read_unverified("garbage"), None);
}
