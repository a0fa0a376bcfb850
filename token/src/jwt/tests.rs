use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::mint::{AtticClaims, Signer};
use super::*;
use crate::{CacheName, Permission, Refusal};

fn cache(name: &str) -> CacheName {
    name.parse().expect("a cache name")
}

fn hs256() -> Signer {
    Signer::Hs256(b"a secret only this server knows".to_vec())
}

/// One RSA key for the whole module: generating one takes a moment.
fn rsa() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(Signer::generate_rs256)
}

fn verifier_for(signer: &Signer) -> JwtVerifier {
    let key = match signer {
        Signer::Hs256(_) => JwtKey::from_hs256_secret_base64(&signer.secret_base64()),
        Signer::Rs256(_) => JwtKey::from_rs256_secret_base64(&signer.secret_base64()),
    }
    .expect("the key parses");
    JwtVerifier::new(key, None, None)
}

fn claims(grants: &[(Permission, &str)]) -> AtticClaims {
    AtticClaims::make_token("alice", 3600, grants)
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[test]
fn accepts_what_attic_make_token_mints_with_hs256() {
    let signer = hs256();
    let token = signer.sign(&claims(&[(Permission::Pull, "team-*")]).to_json());
    let jwt = verifier_for(&signer).verify(&token, now()).expect("valid");
    assert_eq!(jwt.subject(), Some("alice"));
    assert_eq!(
        jwt.authorize(&cache("team-a"), Permission::Pull, now()),
        Ok(())
    );
    assert_eq!(
        jwt.authorize(&cache("team-a"), Permission::Push, now()),
        Err(Refusal::Denied)
    );
    assert_eq!(
        jwt.authorize(&cache("other"), Permission::Pull, now()),
        Err(Refusal::Denied)
    );
}

#[test]
fn accepts_rs256_with_the_private_key_or_either_public_key_form() {
    let signer = rsa();
    let token = signer.sign(&claims(&[(Permission::Push, "c")]).to_json());
    let Signer::Rs256(pair) = signer else {
        unreachable!()
    };
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let spki = pair.public_key().as_der().expect("SPKI");
    let keys = [
        JwtKey::from_rs256_secret_base64(&signer.secret_base64()),
        JwtKey::from_rs256_pubkey_base64(&signer.public_key_base64().expect("RSA")),
        JwtKey::from_rs256_pubkey_base64(&STANDARD.encode(to_pem("PUBLIC KEY", spki.as_ref()))),
    ];
    for key in keys {
        let key = key.expect("the key parses");
        let jwt = JwtVerifier::new(key, None, None)
            .verify(&token, now())
            .expect("valid");
        assert_eq!(jwt.authorize(&cache("c"), Permission::Push, now()), Ok(()));
    }
}

#[test]
fn make_token_layout_is_attics() {
    let mut claims = AtticClaims::make_token(
        "meow",
        60,
        &[
            (Permission::Push, "b"),
            (Permission::Pull, "a"),
            (Permission::Pull, "b"),
            (Permission::DestroyCache, "a"),
        ],
    );
    claims.expires_at = 4102324986;
    claims.not_before = 1700000000;
    assert_eq!(
        claims.to_json(),
        "{\"exp\":4102324986,\"nbf\":1700000000,\"sub\":\"meow\",\
         \"https://jwt.attic.rs/v1\":{\"caches\":{\"a\":{\"r\":1,\"cd\":1},\"b\":{\"r\":1,\"w\":1}}}}"
    );
}

#[test]
fn each_attic_permission_key_maps_to_ours_alone() {
    let signer = hs256();
    let verifier = verifier_for(&signer);
    for granted in Permission::ALL {
        let token = signer.sign(&claims(&[(granted, "c")]).to_json());
        let jwt = verifier.verify(&token, now()).expect("valid");
        for asked in Permission::ALL {
            let expected = if asked == granted {
                Ok(())
            } else {
                Err(Refusal::Denied)
            };
            assert_eq!(
                jwt.authorize(&cache("c"), asked, now()),
                expected,
                "{granted} granted, {asked} asked"
            );
        }
    }
}

fn grants_of(payload: &str) -> AtticJwt {
    let signer = hs256();
    verifier_for(&signer)
        .verify(&signer.sign(payload), now())
        .expect("valid")
}

fn caches_payload(caches: &str) -> String {
    format!("{{\"sub\":\"s\",\"https://jwt.attic.rs/v1\":{{\"caches\":{{{caches}}}}}}}")
}

#[test]
fn an_exact_name_wins_over_any_pattern_wherever_it_is() {
    let jwt = grants_of(&caches_payload(
        "\"team-*\":{\"r\":1,\"w\":1},\"team-a\":{\"r\":1}",
    ));
    assert_eq!(
        jwt.authorize(&cache("team-a"), Permission::Push, now()),
        Err(Refusal::Denied)
    );
    assert_eq!(
        jwt.authorize(&cache("team-b"), Permission::Push, now()),
        Ok(())
    );
}

#[test]
fn the_first_matching_pattern_in_token_order_decides_alone() {
    // `team-*` comes first and grants only pull: `*`'s push never applies
    // to team caches, as in Attic; permissions are never combined.
    let jwt = grants_of(&caches_payload(
        "\"team-*\":{\"r\":1},\"*\":{\"r\":1,\"w\":1}",
    ));
    assert_eq!(
        jwt.authorize(&cache("team-x"), Permission::Push, now()),
        Err(Refusal::Denied)
    );
    assert_eq!(
        jwt.authorize(&cache("else"), Permission::Push, now()),
        Ok(())
    );
    // The other order: `*` first shadows `team-*`.
    let jwt = grants_of(&caches_payload(
        "\"*\":{\"r\":1},\"team-*\":{\"r\":1,\"w\":1}",
    ));
    assert_eq!(
        jwt.authorize(&cache("team-x"), Permission::Push, now()),
        Err(Refusal::Denied)
    );
}

#[test]
fn wildcards_match_any_run_and_plus_is_a_pattern_character() {
    let jwt = grants_of(&caches_payload("\"a*z\":{\"r\":1},\"user+*\":{\"r\":1}"));
    for name in ["az", "abcz", "a-z"] {
        assert_eq!(
            jwt.authorize(&cache(name), Permission::Pull, now()),
            Ok(()),
            "{name}"
        );
    }
    for name in ["za", "a", "abc"] {
        assert!(
            jwt.authorize(&cache(name), Permission::Pull, now())
                .is_err(),
            "{name}"
        );
    }
}

#[test]
fn permissions_absent_or_zero_grant_nothing_and_unknown_keys_are_ignored() {
    let jwt = grants_of(&caches_payload("\"c\":{\"r\":0,\"x\":7}"));
    for permission in Permission::ALL {
        assert_eq!(
            jwt.authorize(&cache("c"), permission, now()),
            Err(Refusal::Denied)
        );
    }
}

#[test]
fn expiry_and_not_before_have_no_leeway() {
    let signer = hs256();
    let verifier = verifier_for(&signer);
    let mut c = claims(&[(Permission::Pull, "c")]);
    c.not_before = 1000;
    c.expires_at = 2000;
    let token = signer.sign(&c.to_json());
    assert!(matches!(
        verifier.verify(&token, at(999)),
        Err(JwtError::NotYetValid)
    ));
    assert!(verifier.verify(&token, at(1000)).is_ok());
    assert!(verifier.verify(&token, at(2000)).is_ok());
    assert!(matches!(
        verifier.verify(&token, at(2000) + Duration::from_millis(1)),
        Err(JwtError::Expired)
    ));
    let jwt = verifier.verify(&token, at(1500)).expect("valid");
    assert_eq!(
        jwt.authorize(&cache("c"), Permission::Pull, at(2001)),
        Err(Refusal::Expired)
    );
}

#[test]
fn a_token_issued_in_the_future_is_refused() {
    let signer = hs256();
    let token = signer.sign(&caches_payload("").replacen('{', "{\"iat\":5000,", 1));
    assert!(matches!(
        verifier_for(&signer).verify(&token, at(4999)),
        Err(JwtError::IssuedInFuture)
    ));
    assert!(verifier_for(&signer).verify(&token, at(5000)).is_ok());
}

#[test]
fn issuer_and_audiences_are_required_when_bound() {
    let signer = hs256();
    let key = JwtKey::from_hs256_secret_base64(&signer.secret_base64()).expect("key");
    let audiences = BTreeSet::from(["cache".to_owned(), "other".to_owned()]);
    let verifier = JwtVerifier::new(key, Some("https://idp".into()), Some(audiences));
    let mut c = claims(&[(Permission::Pull, "c")]);
    let verify = |c: &AtticClaims| verifier.verify(&signer.sign(&c.to_json()), now());
    assert!(matches!(verify(&c), Err(JwtError::WrongIssuer)));
    c.issuer = Some("https://elsewhere".into());
    assert!(matches!(verify(&c), Err(JwtError::WrongIssuer)));
    c.issuer = Some("https://idp".into());
    assert!(matches!(verify(&c), Err(JwtError::WrongAudience)));
    c.audiences = Some(vec!["nobody".into()]);
    assert!(matches!(verify(&c), Err(JwtError::WrongAudience)));
    c.audiences = Some(vec!["nobody".into(), "other".into()]);
    assert!(verify(&c).is_ok());
    // `aud` as a single string, as other issuers write it.
    let single = c.to_json().replace("[\"nobody\",\"other\"]", "\"cache\"");
    assert!(verifier.verify(&signer.sign(&single), now()).is_ok());
}

#[test]
fn refuses_a_tampered_payload_and_another_secret() {
    let signer = hs256();
    let token = signer.sign(&claims(&[(Permission::Pull, "c")]).to_json());
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let (header, _) = signed.split_once('.').expect("three parts");
    let widened = URL_SAFE_NO_PAD.encode(claims(&[(Permission::Pull, "*")]).to_json());
    let tampered = format!("{header}.{widened}.{signature}");
    let verifier = verifier_for(&signer);
    assert!(matches!(
        verifier.verify(&tampered, now()),
        Err(JwtError::BadSignature)
    ));
    let other = Signer::Hs256(b"another server's secret".to_vec());
    assert!(matches!(
        verifier.verify(&other.sign(&claims(&[]).to_json()), now()),
        Err(JwtError::BadSignature)
    ));
    // And across algorithms: an RS256 server refuses another RSA key.
    let other_rsa = Signer::generate_rs256();
    assert!(matches!(
        verifier_for(rsa()).verify(&other_rsa.sign(&claims(&[]).to_json()), now()),
        Err(JwtError::BadSignature)
    ));
}

#[test]
fn refuses_alg_none_and_algorithm_confusion() {
    let payload = claims(&[(Permission::Pull, "*")]).to_json();
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode("{\"alg\":\"none\",\"typ\":\"JWT\"}"),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    for verifier in [verifier_for(&hs256()), verifier_for(rsa())] {
        assert!(matches!(
            verifier.verify(&unsigned, now()),
            Err(JwtError::WrongAlgorithm { .. })
        ));
    }
    // The classic confusion: HS256 keyed with the RSA public key's PEM,
    // which an RS256 server publishes.
    let public_pem = STANDARD
        .decode(rsa().public_key_base64().expect("RSA"))
        .expect("base64");
    let forged = Signer::Hs256(public_pem).sign(&payload);
    assert!(matches!(
        verifier_for(rsa()).verify(&forged, now()),
        Err(JwtError::WrongAlgorithm { .. })
    ));
    // And the other way: an RS256 token on an HS256 server.
    assert!(matches!(
        verifier_for(&hs256()).verify(&rsa().sign(&payload), now()),
        Err(JwtError::WrongAlgorithm { .. })
    ));
    // Case matters, as in jwt-simple.
    let lower = hs256().sign_with_header("{\"alg\":\"hs256\"}", &payload);
    assert!(matches!(
        verifier_for(&hs256()).verify(&lower, now()),
        Err(JwtError::WrongAlgorithm { .. })
    ));
}

#[test]
fn refuses_critical_headers_and_types_other_than_jwt() {
    let signer = hs256();
    let verifier = verifier_for(&signer);
    let payload = claims(&[(Permission::Pull, "c")]).to_json();
    let crit =
        signer.sign_with_header("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", &payload);
    assert!(matches!(
        verifier.verify(&crit, now()),
        Err(JwtError::CriticalHeader)
    ));
    let typ = signer.sign_with_header("{\"alg\":\"HS256\",\"typ\":\"JWE\"}", &payload);
    assert!(matches!(
        verifier.verify(&typ, now()),
        Err(JwtError::NotJwtType)
    ));
    // No `typ` at all, and an explicit sub-type, are fine.
    for header in [
        "{\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"kid\":\"k1\"}",
    ] {
        assert!(
            verifier
                .verify(&signer.sign_with_header(header, &payload), now())
                .is_ok()
        );
    }
}

#[test]
fn refuses_oversize_tokens_before_reading_them() {
    let verifier = verifier_for(&hs256());
    let huge = "a".repeat(MAX_JWT_LEN + 1);
    assert!(matches!(
        verifier.verify(&huge, now()),
        Err(JwtError::TooLarge)
    ));
    let many = hs256().sign(&caches_payload(&format!(
        "\"c\":{{\"r\":1,\"pad\":\"{}\"}}",
        "x".repeat(MAX_JWT_LEN)
    )));
    assert!(matches!(
        verifier.verify(&many, now()),
        Err(JwtError::TooLarge)
    ));
}

#[test]
fn refuses_malformed_shapes_base64_and_json() {
    let signer = hs256();
    let verifier = verifier_for(&signer);
    let good = signer.sign(&claims(&[(Permission::Pull, "c")]).to_json());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        (format!("{}.{}", parts[0], parts[1]), "two parts"),
        (format!("{good}.x"), "four parts"),
        (
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            "padding",
        ),
        (
            format!("{}.{}.{}!", parts[0], parts[1], parts[2]),
            "bad signature base64",
        ),
        (
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("not json"),
                parts[1],
                parts[2]
            ),
            "header json",
        ),
    ];
    for (token, what) in cases {
        let result = verifier.verify(&token, now());
        assert!(
            matches!(
                result,
                Err(JwtError::NotThreeParts | JwtError::NotBase64 { .. } | JwtError::BadHeader(_))
            ),
            "{what}: {result:?}"
        );
    }
    // A signed payload that is not JSON: signature first, then claims.
    assert!(matches!(
        verifier.verify(&signer.sign("not json"), now()),
        Err(JwtError::BadClaims(_))
    ));
}

#[test]
fn refuses_claims_attic_refuses() {
    let signer = hs256();
    let verifier = verifier_for(&signer);
    let cases = [
        ("{\"sub\":\"s\"}", "no Attic claim"),
        (
            "{\"sub\":\"s\",\"https://jwt.attic.rs/v1\":{}}",
            "no caches",
        ),
        (
            &caches_payload("\"-lead\":{\"r\":1}") as &str,
            "pattern starting with -",
        ),
        (
            &caches_payload("\"has space\":{\"r\":1}"),
            "pattern with a space",
        ),
        (
            &caches_payload(&format!("\"{}\":{{\"r\":1}}", "a".repeat(51))),
            "pattern of 51",
        ),
        (&caches_payload("\"c\":{\"r\":2}"), "permission 2"),
        (&caches_payload("\"c\":{\"r\":true}"), "permission true"),
        (
            &caches_payload("\"c\":{\"r\":1},\"c\":{\"w\":1}"),
            "pattern twice",
        ),
        (
            "{\"sub\":5,\"https://jwt.attic.rs/v1\":{\"caches\":{}}}",
            "numeric sub",
        ),
        (
            "{\"exp\":-1,\"https://jwt.attic.rs/v1\":{\"caches\":{}}}",
            "negative exp",
        ),
        (
            "{\"exp\":\"soon\",\"https://jwt.attic.rs/v1\":{\"caches\":{}}}",
            "text exp",
        ),
    ];
    for (payload, what) in cases {
        let result = verifier.verify(&signer.sign(payload), now());
        assert!(
            matches!(result, Err(JwtError::BadClaims(_))),
            "{what}: {result:?}"
        );
    }
}

#[test]
fn a_token_without_exp_never_expires_as_in_attic() {
    let jwt = grants_of(&caches_payload("\"c\":{\"r\":1}"));
    assert_eq!(
        jwt.authorize(&cache("c"), Permission::Pull, at(u32::MAX.into())),
        Ok(())
    );
}

#[test]
fn looks_like_jwt_tells_the_two_formats_apart() {
    assert!(looks_like_jwt("eyJ.eyJ.sig"));
    let root = crate::RootKey::generate();
    let biscuit = crate::TokenSpec::default()
        .sign(&root)
        .and_then(|t| t.to_base64())
        .expect("a token");
    assert!(!looks_like_jwt(&biscuit));
}

#[test]
fn the_derived_root_key_is_fixed_by_the_secret_alone() {
    let key = |s: &[u8]| JwtKey::from_hs256_secret_base64(&STANDARD.encode(s)).expect("key");
    let a = key(b"one secret").derived_root_key().expect("derived");
    let again = key(b"one secret").derived_root_key().expect("derived");
    let b = key(b"another").derived_root_key().expect("derived");
    assert_eq!(a.public(), again.public());
    assert_ne!(a.public(), b.public());
    let rsa_key = JwtKey::from_rs256_secret_base64(&rsa().secret_base64()).expect("key");
    assert!(rsa_key.derived_root_key().is_some());
    let public_only =
        JwtKey::from_rs256_pubkey_base64(&rsa().public_key_base64().expect("RSA")).expect("key");
    assert!(public_only.derived_root_key().is_none());
    assert!(!public_only.has_secret());
}

#[test]
fn bad_configured_keys_say_why() {
    assert!(matches!(
        JwtKey::from_hs256_secret_base64("not base64!"),
        Err(JwtKeyError::NotBase64(_))
    ));
    assert!(matches!(
        JwtKey::from_hs256_secret_base64(""),
        Err(JwtKeyError::EmptySecret)
    ));
    assert!(matches!(
        JwtKey::from_rs256_secret_base64(&STANDARD.encode("just text")),
        Err(JwtKeyError::NotPem { .. })
    ));
    let public = rsa().public_key_base64().expect("RSA");
    assert!(matches!(
        JwtKey::from_rs256_secret_base64(&public),
        Err(JwtKeyError::WrongPemLabel { .. })
    ));
    assert!(matches!(
        JwtKey::from_rs256_pubkey_base64(&rsa().secret_base64()),
        Err(JwtKeyError::WrongPemLabel { .. })
    ));
    let garbage = STANDARD.encode(to_pem("RSA PUBLIC KEY", b"not DER"));
    assert!(matches!(
        JwtKey::from_rs256_pubkey_base64(&garbage),
        Err(JwtKeyError::RsaKeyRejected(_))
    ));
}

#[test]
fn a_client_reads_a_jwts_expiry_without_the_key() {
    let token = hs256().sign(&claims(&[(Permission::Pull, "team-*")]).to_json());
    let stated = crate::read_unverified(&token).expect("readable");
    assert_eq!(stated.subject.as_deref(), Some("alice"));
    let exp = stated.expires_at.expect("an Attic JWT has an exp");
    let in_an_hour = now() + Duration::from_secs(3600);
    let slack = Duration::from_secs(60);
    assert!(exp <= in_an_hour + slack && exp + slack >= in_an_hour);
    assert_eq!(crate::read_unverified("a.!!!.c"), None);
}
