//! Must show — clean-up: a scenario whose test panics half-way leaves no container and no
//! network behind. Everything a scenario creates carries the harness's label with the
//! scenario's id; after the panic nothing with that label is left.

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use common::*;
use conformance::docker::{self, Scenario, host};

#[test]
fn a_scenario_that_panics_leaves_no_container_or_network_behind() {
    if docker::skip_without_docker() {
        return;
    }
    let id = Mutex::new(None);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut scn = Scenario::new("cleanup").unwrap();
        *id.lock().unwrap() = Some(scn.id.clone());
        let mut m = base_manifests();
        m.ranges = vec![range("office", &scn.subnet4(), true)];
        start_relay_and_sink(&mut scn, &m);
        scn.postfix_client("client", host::CLIENT, &client_opts(&scn, "may"))
            .unwrap();
        let (containers, networks) = docker::leftovers(&scn.id).unwrap();
        assert_eq!(containers.len(), 3, "listed by label: {containers:?}");
        assert_eq!(networks.len(), 1, "listed by label: {networks:?}");
        panic!("the scenario fails on purpose");
    }));
    assert!(outcome.is_err(), "the scenario panicked");
    let id = id.into_inner().unwrap().expect("the scenario started");
    let (containers, networks) = docker::leftovers(&id).unwrap();
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(networks.is_empty(), "networks left: {networks:?}");
}
