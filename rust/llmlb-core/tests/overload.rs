//! Issue 11's rules through the public API: saturation judged on the request, a
//! backlog released when prefill ends, output estimates in the cost, model-scoped
//! prefixes, prompts larger than any KV cache.

use llmlb_core::{
    Clock, CoreError, GpuMetrics, NodeSpec, Outcome, Prompt, RouteDecision, RouteRequest, Router,
    RouterConfig,
};

const CAPACITY: u64 = 100_000;

fn cluster(ids: &[&str]) -> Router {
    let router = Router::with_clock(RouterConfig::default(), Clock::manual()).unwrap();
    for id in ids {
        let mut spec = NodeSpec::new(id, "");
        spec.kv_capacity_tokens = Some(CAPACITY);
        router.upsert_node(spec).unwrap();
    }
    router
}

fn usage(router: &Router, node: &str, kv: f64) {
    let report = GpuMetrics {
        kv_cache_usage: Some(kv),
        ..GpuMetrics::default()
    };
    router.update_metrics(node, report).unwrap();
}

fn tokens(start: u32, len: u32) -> Vec<u32> {
    (start..start + len).collect()
}

fn route<'a>(router: &Router, request: RouteRequest<'a>) -> RouteDecision {
    router.route(&request).unwrap()
}

fn ids(prompt: &[u32]) -> RouteRequest<'_> {
    RouteRequest {
        prompt: Prompt::Tokens(prompt),
        ..RouteRequest::text("")
    }
}

#[test]
fn a_busy_holder_with_room_for_the_rest_keeps_the_prompt() {
    let router = cluster(&["a", "b"]);
    let history = tokens(0, 8_000);
    let first = route(&router, ids(&history));
    router
        .complete(&first.request_id, Outcome::Ok, None, 0, 0)
        .unwrap();
    let holder = first.node_id.to_string();
    let other = if holder == "a" { "b" } else { "a" };
    // 97% used leaves 3,000 tokens: enough for the next turn's 200 new tokens and its
    // 256 expected output tokens, not for the whole 8,200-token prompt elsewhere.
    usage(&router, &holder, 0.97);
    usage(&router, other, 0.5);
    let mut next_turn = history.clone();
    next_turn.extend(tokens(50_000, 200));
    let d = route(&router, ids(&next_turn));
    assert_eq!(&*d.node_id, holder.as_str());
    assert!(d.candidates().iter().all(|c| c.skipped.is_none()));
}

#[test]
fn a_request_that_does_not_fit_pays_for_the_wait() {
    let router = cluster(&["a", "b"]);
    usage(&router, "a", 0.99);
    usage(&router, "b", 0.90);
    // 1,000 free tokens on a, 10,000 on b: a 4,000-token prompt fits only on b.
    let d = route(&router, ids(&tokens(0, 4_000)));
    assert_eq!(&*d.node_id, "b");
    let scores: Vec<f64> = d.candidates().iter().map(|c| c.score.unwrap()).collect();
    assert!(scores[0] > scores[1], "{scores:?}");
}

#[test]
fn max_tokens_reaches_the_cost() {
    let router = cluster(&["a"]);
    usage(&router, "a", 0.95);
    let score = |out: Option<u32>, id: &str, start: u32| {
        let prompt = tokens(start, 1_000);
        let d = route(
            &router,
            RouteRequest {
                request_id: Some(id.into()),
                expected_output_tokens: out,
                ..ids(&prompt)
            },
        );
        router.first_token(&d.request_id);
        router
            .complete(&d.request_id, Outcome::Ok, None, 0, 0)
            .unwrap();
        d.candidates()[0].score.unwrap()
    };
    // 5,000 tokens free: 1,000 + 3,000 fit, 1,000 + 4,096 (the cap) do not.
    let fits = score(Some(3_000), "fits", 0);
    let long = score(Some(100_000), "long", 10_000);
    assert!(long > fits, "{fits} vs {long}");
}

#[test]
fn first_token_releases_the_prompt_from_the_backlog() {
    let router = cluster(&["a"]);
    let d = route(&router, ids(&tokens(0, 40_000)));
    let backlog = || router.node_statuses()[0].backlog_tokens;
    assert_eq!(backlog(), 40_000.0);
    assert!(router.first_token(&d.request_id));
    assert_eq!(backlog(), 0.0);
    assert!(router.first_token(&d.request_id), "a repeat is a no-op");
    assert!(!router.first_token("unknown"));
}

#[test]
fn a_finished_huge_prompt_releases_its_backlog_at_once() {
    let router = cluster(&["a", "b"]);
    let huge = route(&router, ids(&tokens(0, 90_000)));
    let small = route(&router, ids(&tokens(500_000, 1_000)));
    assert_ne!(huge.node_id, small.node_id);
    router
        .complete(&huge.request_id, Outcome::Error, None, 0, 0)
        .unwrap();
    let statuses = router.node_statuses();
    let huge_node = statuses.iter().find(|s| s.spec.id == huge.node_id).unwrap();
    assert_eq!(huge_node.backlog_tokens, 0.0);
    // The next request is free to use the idle node again.
    let next = route(&router, ids(&tokens(900_000, 1_000)));
    assert_eq!(next.node_id, huge.node_id);
}

#[test]
fn a_prompt_larger_than_every_kv_cache_is_invalid_input() {
    let router = cluster(&["a", "b"]);
    let err = router
        .route(&ids(&tokens(0, CAPACITY as u32 + 16)))
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::InvalidInput(m) if m.contains("longer than the KV cache")),
        "{err}"
    );
    assert_eq!(router.in_flight_total(), 0);
}

#[test]
fn prefixes_are_never_credited_across_models() {
    let router = cluster(&["a", "b"]);
    let prompt = tokens(0, 4_000);
    let for_model = |model: &'static str| RouteRequest {
        model: Some(model),
        ..ids(&prompt)
    };
    let first = route(&router, for_model("llama"));
    router
        .complete(&first.request_id, Outcome::Ok, None, 0, 0)
        .unwrap();
    assert_eq!(route(&router, for_model("llama")).matched_blocks, 250);
    assert_eq!(route(&router, for_model("mistral")).matched_blocks, 0);
    let adapter = RouteRequest {
        adapter: Some("sql-lora"),
        ..for_model("llama")
    };
    assert_eq!(route(&router, adapter).matched_blocks, 0);
}
