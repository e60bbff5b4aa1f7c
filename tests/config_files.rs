//! The shipped configuration files stay in step with the keys the code reads.

use std::path::Path;

use session_failover::config::{Config, Properties, keys};

#[test]
fn project_properties_lists_every_key_and_parses() {
    let text = std::fs::read_to_string("config/project.properties").unwrap();
    let mut p = Properties::default();
    p.merge_file(Path::new("config/project.properties"), text.as_bytes())
        .unwrap();
    for spec in keys::KEYS {
        assert!(
            p.get(spec.key).is_some(),
            "config/project.properties lacks {}",
            spec.key
        );
    }
    for spec in keys::APP_KEYS {
        assert!(
            text.contains(&format!("spring.session.<app>.{}", spec.suffix)),
            "{}",
            spec.suffix
        );
    }
    assert!(
        p.unknown_key_warnings().is_empty(),
        "{:?}",
        p.unknown_key_warnings()
    );
    let mut layered = Properties::builtin();
    layered
        .merge_file(Path::new("config/project.properties"), text.as_bytes())
        .unwrap();
    let config = Config::from_properties(&layered).unwrap();
    assert!(
        config.enabled,
        "the shipped config turns failover on for the demo"
    );
    assert_eq!(
        config.save_mode("storefront"),
        Some(session_failover::SaveMode::Sync)
    );
}

#[test]
fn the_example_local_properties_parses() {
    let text = std::fs::read_to_string("config/local.properties.example").unwrap();
    let mut p = Properties::builtin();
    p.merge_file(
        Path::new("config/local.properties.example"),
        text.as_bytes(),
    )
    .unwrap();
    Config::from_properties(&p).unwrap();
}
