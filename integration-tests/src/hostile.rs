//! Inputs a hostile client sends, for the tests that show they cost the
//! server no more than a normal client, and for `scripts/bench --hostile`.

use biscuit_auth::UnverifiedBiscuit;
use biscuit_auth::builder::BlockBuilder;

/// `token` (any token the holder has) with a block appended whose one
/// check, were it evaluated, runs 30⁴ closures: seconds of CPU in the
/// Datalog evaluator, whose time limit is checked only between iterations.
/// Appending needs no key, so anyone who ever held a token can send it.
pub fn closure_heavy_token(token: &str) -> String {
    let list = format!(
        "[{}]",
        (0..30).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let code = format!(
        "check if {list}.all($a -> {list}.all($b -> {list}.all($c -> \
         {list}.all($d -> $a + $b + $c + $d >= 0))));"
    );
    UnverifiedBiscuit::from_base64(token.trim())
        .expect("a token")
        .append(
            BlockBuilder::new()
                .code(code.as_str())
                .expect("valid Datalog"),
        )
        .and_then(|t| t.to_base64())
        .expect("appends")
}
