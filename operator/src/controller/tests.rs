//! Reconcile against the mocked API server: each test lists the requests reconcile makes.

use super::fixtures::{FakeProber, World};
use super::probe::ProbingDisabled;

#[tokio::test]
async fn dump() {
    let world = World::example("quickstart");
    let (result, log) = world.reconcile(ProbingDisabled).await;
    println!("{result:?}");
    for r in &log {
        println!(
            "{} ?{}\n{}",
            r.line(),
            r.query,
            serde_json::to_string(&r.body).unwrap()
        );
    }
    let _ = FakeProber::default();
    panic!();
}
