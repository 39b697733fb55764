//! Active-active replicas: one replica's decisions counted in another's core.

use llmlb_core::{
    Clock, NodeSpec, Outcome, RemoteRoute, RouteDecision, RouteRequest, Router, RouterConfig,
};

fn replica(config: RouterConfig) -> Router {
    let router = Router::with_clock(config, Clock::manual()).unwrap();
    for id in ["a", "b"] {
        router
            .upsert_node(NodeSpec::new(id, &format!("{id}:8000")))
            .unwrap();
    }
    router
}

fn in_flight(router: &Router, node: &str) -> u32 {
    let status = router
        .node_statuses()
        .into_iter()
        .find(|s| &*s.spec.id == node);
    status.unwrap().in_flight
}

fn remote<'a>(decision: &'a RouteDecision, replica: &'a str) -> RemoteRoute<'a> {
    RemoteRoute {
        replica,
        request_id: &decision.request_id,
        node_id: &decision.node_id,
        hashes: &decision.hashes,
        text_blocks: decision.text_blocks,
        prompt_tokens: decision.prompt_tokens,
        prefill_tokens: decision.prefill_tokens,
        matched_tokens: Some(decision.matched_tokens),
        routed_at_s: None,
    }
}

const PROMPT: &str = "You are a helpful assistant of a book shop. Answer briefly and politely. \
                      The customer asks where the order is.";

#[test]
fn a_replica_counts_the_other_replicas_decisions_until_they_end() {
    let (one, two) = (
        replica(RouterConfig::default()),
        replica(RouterConfig::default()),
    );
    let decision = one.route(&RouteRequest::text(PROMPT)).unwrap();
    let node = decision.node_id.to_string();
    assert!(two.apply_remote_route(&remote(&decision, "one")).unwrap());
    assert!(
        !two.apply_remote_route(&remote(&decision, "one")).unwrap(),
        "a repeat"
    );
    assert_eq!(in_flight(&two, &node), 1);
    assert_eq!(
        (two.in_flight_total(), two.remote_in_flight_total()),
        (0, 1)
    );
    // The prompt now leans to the same node on the second replica too.
    let credits = two.prefix_credit(&RouteRequest::text(PROMPT)).unwrap();
    let credited = credits.iter().find(|c| *c.node_id == *node).unwrap();
    assert_eq!(credited.blocks, decision.hashes.len() as u32);
    assert!(two.apply_remote_first_token("one", &decision.request_id));
    one.complete(&decision.request_id, Outcome::Ok, None, 0, 0)
        .unwrap();
    assert!(two.apply_remote_completion("one", &decision.request_id));
    assert!(!two.apply_remote_completion("one", &decision.request_id));
    assert_eq!(in_flight(&two, &node), 0);
}

#[test]
fn a_gone_replica_and_a_stale_request_stop_counting_without_an_outcome() {
    let config = RouterConfig {
        request_ttl_s: 10.0,
        ..RouterConfig::default()
    };
    let (one, two) = (replica(config.clone()), replica(config));
    let first = one.route(&RouteRequest::text("first")).unwrap();
    let second = one.route(&RouteRequest::text("second")).unwrap();
    two.apply_remote_route(&remote(&first, "one")).unwrap();
    two.apply_remote_route(&remote(&second, "one")).unwrap();
    assert_eq!(two.forget_replica("other"), 0);
    assert_eq!(two.forget_replica("one"), 2);
    assert_eq!(in_flight(&two, "a") + in_flight(&two, "b"), 0);
    two.apply_remote_route(&remote(&first, "one")).unwrap();
    two.set_time_s(11.0).unwrap();
    assert!(
        two.expire_stale().is_empty(),
        "another replica's request has no outcome here"
    );
    assert_eq!(two.remote_in_flight_total(), 0);
    assert_eq!(in_flight(&two, "a") + in_flight(&two, "b"), 0);
}
