//! Reproduction (security review of issue 8): an admin learns the master's code through the
//! uniqueness check of `set_code`. A guess that misses is a plain success (not counted); only
//! the hit answers `duplicate_code`, and it is counted after the fact. Fails today.

mod common;

use common::World;
use serde_json::json;

#[test]
fn an_admin_cannot_learn_the_masters_code_from_duplicate_code_answers() {
    // The master is "1234" (World::start); a 4-digit space.
    let world = World::start(|_| {});
    world.add_user("Bob", "admin", "5511");
    world.add_user("Probe", "arm_only", "7070");
    let mut found = None;
    let mut misses = 0;
    for guess in 1200..1300u32 {
        let r = world.command(json!({"id": format!("g{guess}"), "auth": "5511",
            "command": "set_code", "user": "Probe", "code": format!("{guess:04}")}));
        match r["error"]["kind"].as_str() {
            None => misses += 1,
            Some("duplicate_code") => {
                found = Some(guess);
                break;
            }
            Some(other) => panic!("guess {guess}: {other} after {misses} misses: {r}"),
        }
    }
    assert_eq!(
        found, None,
        "the admin found the master's code after {misses} uncounted misses"
    );
}
