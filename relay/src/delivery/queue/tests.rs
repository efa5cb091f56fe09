//! The queue manager's unit tests that need its insides.

use super::shared::Destinations;
use super::turn::metric_host;

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::delivery::attempt::GroupResult;
use crate::delivery::route::RouteChoice;

use crate::config::HostConfig;

#[test]
fn the_destination_table_holds_only_destinations_under_way() {
    let table = Destinations {
        active: Mutex::new(HashMap::new()),
        limit: 2,
        limits: Mutex::new(HashMap::new()),
        freed: Notify::new(),
    };
    for i in 0..1000 {
        let key = format!("mx:d{i}.example");
        assert!(table.try_take(&key));
        table.give_back(&key);
    }
    assert!(table.active().is_empty(), "no entry per domain left behind");
    assert!(table.try_take("route:a") && table.try_take("route:a"));
    assert!(!table.try_take("route:a"), "the third is refused");
    assert_eq!(table.full().into_iter().collect::<Vec<_>>(), ["route:a"]);
    table.give_back("route:a");
    assert!(table.try_take("route:a"));
}

#[test]
fn metric_hosts_are_configured_hosts_or_mx() {
    let pool_host = HostConfig {
        host: "smarthost.example".into(),
        port: 587,
    };
    let result = GroupResult {
        outcomes: Vec::new(),
        host: Some("mx7.attacker.example:25".into()),
        failed_hosts: Vec::new(),
        succeeded_host: Some(pool_host.clone()),
    };
    assert_eq!(
        metric_host(&RouteChoice::DirectMx("attacker.example".into()), &result),
        "mx"
    );
    assert_eq!(
        metric_host(&RouteChoice::Configured(0), &result),
        "smarthost.example:587"
    );
    let failed = GroupResult {
        succeeded_host: None,
        failed_hosts: vec![pool_host],
        ..result
    };
    assert_eq!(
        metric_host(&RouteChoice::Configured(0), &failed),
        "smarthost.example:587"
    );
}
