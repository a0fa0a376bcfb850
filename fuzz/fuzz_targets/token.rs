//! Tokens are untrusted input. Two properties, on bounded inputs:
//!
//! - any text parses or is refused without panicking, and nothing over
//!   the size bound is ever parsed;
//! - a block appended by a holder, with any Datalog in it, never widens
//!   what the token grants: if the attenuated token authorises an
//!   operation on a cache, its parent does too. Nothing is evaluated:
//!   a block of any shape attenuation does not write is refused.
//!
//! Input: one mode byte, then for mode 0 the token text; otherwise a
//! permission byte, a cache name up to the first NUL, and Datalog code.
#![no_main]

use std::sync::OnceLock;

use attic_token::{
    CacheName, CacheNamePattern, MAX_TOKEN_LEN, Permission, RootKey, Token, TokenError, TokenSpec,
};
use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::UnverifiedBiscuit;
use libfuzzer_sys::fuzz_target;

/// A fixed root key, so runs are reproducible.
const ROOT: &str = "ed25519-private/8b2c9a4e1f3d5c7b6a09182736455463728190a0b1c2d3e4f5a6b7c8d9e0f1a2";

struct Fixture {
    root: RootKey,
    parent: Token,
    parent_text: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = RootKey::parse(ROOT).expect("a valid root key");
        let pattern = |p: &str| p.parse::<CacheNamePattern>().expect("pattern");
        let parent = TokenSpec {
            subject: "fuzz".into(),
            expires_at: None,
            grants: vec![
                (pattern("team-*"), Permission::Pull),
                (pattern("team-a"), Permission::Push),
            ],
        }
        .sign(&root)
        .expect("sign");
        let parent_text = parent.to_base64().expect("base64");
        Fixture {
            root,
            parent,
            parent_text,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let fixture = fixture();
    if mode == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        match Token::parse(text, &fixture.root.public()) {
            Ok(token) => {
                assert!(text.trim().len() <= MAX_TOKEN_LEN, "parsed an oversized token");
                let _ = token.check_expiry();
                let _ = token.subject();
            }
            Err(TokenError::TooLarge)
            | Err(TokenError::Invalid(_))
            | Err(TokenError::Unrecognised(_)) => {}
            Err(e) => panic!("unexpected parse error: {e}"),
        }
        return;
    }
    let Some((&permission, rest)) = rest.split_first() else {
        return;
    };
    let permission = Permission::ALL[usize::from(permission) % Permission::ALL.len()];
    let (name, code) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let (Ok(name), Ok(code)) = (std::str::from_utf8(name), std::str::from_utf8(code)) else {
        return;
    };
    let Ok(cache) = name.parse::<CacheName>() else {
        return;
    };
    let Ok(block) = BlockBuilder::new().code(code) else {
        return;
    };
    let child = UnverifiedBiscuit::from_base64(&fixture.parent_text)
        .expect("the parent parses")
        .append(block);
    let Ok(child) = child.and_then(|c| c.to_base64()) else {
        return;
    };
    let Ok(child) = Token::parse(&child, &fixture.root.public()) else {
        // Too large once encoded: refused, which is fine.
        return;
    };
    if child.authorize(&cache, permission).is_ok() {
        assert!(
            fixture.parent.authorize(&cache, permission).is_ok(),
            "an appended block widened the token: {permission:?} on {cache} with\n{code}"
        );
    }
});
