use serde_json::json;

use super::render_owners;

/// Owner records are written by whoever can write to etcd: their names reach the table with
/// their control characters escaped (no terminal escape sequence, no forged line).
#[test]
fn hostile_owner_records_print_no_control_character() {
    let guests = json!([{
        "guest": "vm1\u{1b}]0;pwned\u{7}",
        "record": "readable",
        "node": "evil\u{1b}[2J\nvm2 a * 0 yes",
        "incarnation": "x\ry",
        "this_incarnation": false,
        "owner_is_member": true,
        "served_here": false,
        "moves": 1,
        "want": {"node": "b\u{9b}31m", "incarnation": "i"},
    }]);
    let text = render_owners(&guests);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert_eq!(text.lines().count(), 2, "a header and one guest: {text:?}");
    assert!(text.contains("vm1\\u{1b}]0;pwned\\u{7}"), "{text:?}");
    assert!(text.contains("evil\\u{1b}[2J\\u{a}vm2"), "{text:?}");
}
