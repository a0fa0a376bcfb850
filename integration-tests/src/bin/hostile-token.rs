//! Prints the token given as its argument with a closure-heavy block
//! appended (see `integration_tests::hostile`), for `scripts/bench --hostile`.

fn main() {
    let token = std::env::args().nth(1).expect("usage: hostile-token TOKEN");
    println!(
        "{}",
        integration_tests::hostile::closure_heavy_token(&token)
    );
}
