use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::mint::IdTokenSigner;
use super::*;

const ISSUER: &str = "https://token.actions.githubusercontent.com";
const AUDIENCE: &str = "https://cache.example.com";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn github_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER, "aud": AUDIENCE,
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "ref": "refs/heads/main", "environment": "prod",
        "iat": now, "nbf": now, "exp": now + 300,
    })
}

fn keys(signers: &[&IdTokenSigner]) -> Vec<Jwk> {
    let set = json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()});
    parse_jwk_set(set.to_string().as_bytes()).expect("a JWKS")
}

fn verify(token: &str, keys: &[Jwk]) -> Result<IdToken, IdTokenError> {
    UnverifiedIdToken::parse(token)?.verify(keys, ISSUER, AUDIENCE, SystemTime::now())
}

#[test]
fn accepts_rs256_and_es256_tokens_from_the_issuers_keys() {
    let rsa = IdTokenSigner::generate_rs256("rsa-1");
    let ec = IdTokenSigner::generate_es256("ec-1");
    let keys = keys(&[&rsa, &ec]);
    for signer in [&rsa, &ec] {
        let token = verify(&signer.sign(&github_claims()), &keys).expect("verifies");
        assert_eq!(token.subject(), "repo:acme/app:ref:refs/heads/main");
        assert_eq!(token.string_claim("repository"), Some("acme/app"));
        assert_eq!(token.string_claim("exp"), None, "a number is not a string");
    }
}

#[test]
fn the_claimed_issuer_is_read_before_verifying() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let token = rsa.sign(&github_claims());
    let unverified = UnverifiedIdToken::parse(&token).expect("parses");
    assert_eq!(unverified.claimed_issuer().as_deref(), Some(ISSUER));
    assert_eq!(unverified.key_id(), "k");
}

#[test]
fn refuses_alg_none_and_macs_before_looking_for_a_key() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let payload = github_claims().to_string();
    for alg in ["none", "HS256", "RS512", "PS256"] {
        let header = json!({"alg": alg, "kid": "k"}).to_string();
        let token = rsa.sign_with_header(&header, &payload);
        let unsigned = format!("{}.", token.rsplit_once('.').expect("three parts").0);
        for token in [token, unsigned] {
            let err = UnverifiedIdToken::parse(&token).expect_err(alg);
            assert!(
                matches!(err, IdTokenError::UnsupportedAlgorithm(ref a) if a == alg),
                "{alg}: {err}"
            );
        }
    }
}

#[test]
fn refuses_a_token_whose_alg_is_not_its_keys() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let ec = IdTokenSigner::generate_es256("k");
    // Signed by the EC key under its kid, but the JWKS has the RSA key there.
    let err = verify(&ec.sign(&github_claims()), &keys(&[&rsa])).expect_err("mismatch");
    assert!(
        matches!(err, IdTokenError::AlgorithmMismatch { .. }),
        "{err}"
    );
}

#[test]
fn refuses_bad_signatures_and_unknown_keys() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let impostor = IdTokenSigner::generate_rs256("k");
    let err = verify(&impostor.sign(&github_claims()), &keys(&[&rsa])).expect_err("impostor");
    assert!(matches!(err, IdTokenError::BadSignature), "{err}");
    let other = IdTokenSigner::generate_rs256("other");
    let err = verify(&other.sign(&github_claims()), &keys(&[&rsa])).expect_err("unknown kid");
    assert!(
        matches!(err, IdTokenError::UnknownKey(ref k) if k == "other"),
        "{err}"
    );
    // A payload swapped under a valid signature.
    let token = rsa.sign(&github_claims());
    let mut claims = github_claims();
    claims["repository"] = json!("evil/app");
    let forged = rsa.sign(&claims);
    let parts: Vec<&str> = token.split('.').collect();
    let forged_parts: Vec<&str> = forged.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], forged_parts[1], parts[2]);
    let err = verify(&spliced, &keys(&[&rsa])).expect_err("spliced");
    assert!(matches!(err, IdTokenError::BadSignature), "{err}");
}

#[test]
fn refuses_crit_headers_and_tokens_without_kid() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let payload = github_claims().to_string();
    let crit = json!({"alg": "RS256", "kid": "k", "crit": ["exp"], "exp": 1}).to_string();
    let err = UnverifiedIdToken::parse(&rsa.sign_with_header(&crit, &payload)).expect_err("crit");
    assert!(matches!(err, IdTokenError::CriticalHeader), "{err}");
    let no_kid = json!({"alg": "RS256"}).to_string();
    let err = UnverifiedIdToken::parse(&rsa.sign_with_header(&no_kid, &payload)).expect_err("kid");
    assert!(matches!(err, IdTokenError::MissingKeyId), "{err}");
}

#[test]
fn refuses_oversized_tokens_before_decoding_them() {
    let huge = "a".repeat(MAX_ID_TOKEN_LEN + 1);
    assert!(matches!(
        UnverifiedIdToken::parse(&huge),
        Err(IdTokenError::TooLarge)
    ));
}

#[test]
fn checks_issuer_and_audience_exactly() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let keys = keys(&[&rsa]);
    let mut claims = github_claims();
    claims["iss"] = json!(format!("{ISSUER}/"));
    let err = verify(&rsa.sign(&claims), &keys).expect_err("issuer");
    assert!(matches!(err, IdTokenError::WrongIssuer { .. }), "{err}");
    let mut claims = github_claims();
    claims["aud"] = json!(["https://other.example.com", "sts.amazonaws.com"]);
    let err = verify(&rsa.sign(&claims), &keys).expect_err("audience");
    assert!(matches!(err, IdTokenError::WrongAudience { .. }), "{err}");
    claims["aud"] = json!(["sts.amazonaws.com", AUDIENCE]);
    verify(&rsa.sign(&claims), &keys).expect("a list containing the audience");
}

#[test]
fn times_are_checked_with_the_documented_leeway() {
    let rsa = IdTokenSigner::generate_rs256("k");
    let keys = keys(&[&rsa]);
    let leeway = CLOCK_LEEWAY.as_secs();
    let with = |field: &str, value: u64| {
        let mut claims = github_claims();
        claims[field] = json!(value);
        verify(&rsa.sign(&claims), &keys)
    };
    with("exp", now() - leeway / 2).expect("expired within the leeway");
    assert!(matches!(
        with("exp", now() - leeway - 5),
        Err(IdTokenError::Expired(_))
    ));
    with("nbf", now() + leeway / 2).expect("not yet valid within the leeway");
    assert!(matches!(
        with("nbf", now() + leeway + 5),
        Err(IdTokenError::NotYetValid(_))
    ));
    assert!(matches!(
        with("iat", now() + leeway + 5),
        Err(IdTokenError::IssuedInFuture(_))
    ));
    let mut claims = github_claims();
    claims.as_object_mut().expect("object").remove("exp");
    let err = verify(&rsa.sign(&claims), &keys).expect_err("no exp");
    assert!(matches!(err, IdTokenError::BadClaims(_)), "{err}");
}

#[test]
fn a_jwks_keeps_only_keys_that_verify_id_tokens() {
    let rsa = IdTokenSigner::generate_rs256("rsa");
    let set = json!({"keys": [
        rsa.jwk(),
        {"kty": "oct", "kid": "mac", "k": "c2VjcmV0"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"},
    ]});
    let keys = parse_jwk_set(set.to_string().as_bytes()).expect("a JWKS");
    let kids: Vec<_> = keys.iter().filter_map(Jwk::kid).collect();
    assert_eq!(kids, ["rsa"]);
    let many = json!({"keys": vec![rsa.jwk(); MAX_JWKS_KEYS + 1]});
    assert!(matches!(
        parse_jwk_set(many.to_string().as_bytes()),
        Err(JwkSetError::TooManyKeys)
    ));
}

#[test]
fn claim_patterns_glob_on_whole_values() {
    assert!(claim_matches("acme/*", "acme/app"));
    assert!(claim_matches("refs/tags/v*", "refs/tags/v1.2"));
    assert!(!claim_matches("acme/app", "acme/app2"));
    assert!(!claim_matches("acme/*", "evil/acme/app"));
}
