//! The packaged files stay what they derive from (issue 10, item 5): the .deb's unit is the
//! source tree's with /usr/bin, and its config is config.example.yaml with absolute store paths.

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn settings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_packaged_unit_is_the_source_unit_with_usr_bin() {
    let packaged = read("debian/keypad-bridge.service");
    let source = read("systemd/keypad-bridge.service").replace("/usr/local/bin/", "/usr/bin/");
    assert_eq!(settings(&packaged), settings(&source));
    assert!(packaged.contains("\nExecStart=/usr/bin/keypad-bridge run\n"));
    assert!(settings(&packaged)
        .iter()
        .all(|l| !l.contains("/usr/local/")));
}

#[test]
fn the_packaged_config_is_the_example_with_the_store_in_var_lib() {
    let packaged = read("debian/config.yaml");
    let example = read("config.example.yaml")
        .replace("  path: data/db\n", "  path: /var/lib/keypad-bridge/db\n")
        .replace(
            "  secret_file: data/secret\n",
            "  secret_file: /var/lib/keypad-bridge/secret\n",
        );
    assert_eq!(settings(&packaged), settings(&example));
    let config = keypad_bridge::config::parse(&packaged).unwrap();
    assert_eq!(
        config.store.path,
        std::path::Path::new("/var/lib/keypad-bridge/db")
    );
}
