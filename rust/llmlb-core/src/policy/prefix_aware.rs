//! `prefix_aware` (R2): among the nodes holding the longest matched prefix, the least
//! loaded — unless that would overload it against the least loaded node overall, or
//! nothing matched, in which case `least_request` decides. Loads are compared per unit
//! of capability, so in a mixed cluster a small node counts as busy sooner.
//!
//! A prefix that every request shares (one global system prompt) cannot pull the load
//! onto one node: once its holder is `balance_abs_threshold` requests and
//! `balance_rel_threshold` times busier than the idlest node, requests fall back, and
//! the fallback node then holds that prefix too.

use super::{least_request, Choice, Decision, ParamSpec, Policy, Reason, Registration};
use crate::scoring::{argmin_score, score_order};

const BALANCE_ABS: &str = "balance_abs_threshold";
const BALANCE_REL: &str = "balance_rel_threshold";

pub(super) const REGISTRATION: Registration = Registration {
    name: "prefix_aware",
    params: &[
        ParamSpec::new(BALANCE_ABS, 8.0, 0.0),
        ParamSpec::new(BALANCE_REL, 1.5, 1.0),
    ],
    build: |_| Box::new(PrefixAware),
};

#[derive(Debug)]
struct PrefixAware;

impl Policy for PrefixAware {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision {
            candidates, params, ..
        } = decision;
        least_request::score(candidates);
        let overall = argmin_score(candidates)?;
        let longest = candidates
            .iter()
            .filter(|c| c.eligible())
            .map(|c| c.matched_blocks)
            .max()
            .unwrap_or(0);
        if longest == 0 {
            return Some(Choice {
                index: overall,
                reason: Reason::FallbackLeastRequest,
            });
        }
        let holder = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eligible() && c.matched_blocks == longest)
            .min_by(|(_, a), (_, b)| {
                score_order(a.score.unwrap_or(f64::NAN), b.score.unwrap_or(f64::NAN))
            })
            .map(|(i, _)| i)?;
        let per_capability = |i: usize| candidates[i].load / candidates[i].capability;
        let (holder_load, idlest_load) = (per_capability(holder), per_capability(overall));
        let imbalanced = holder_load - idlest_load > params.get(BALANCE_ABS)
            && holder_load > params.get(BALANCE_REL) * idlest_load;
        Some(if imbalanced {
            Choice {
                index: overall,
                reason: Reason::FallbackImbalance,
            }
        } else {
            Choice {
                index: holder,
                reason: Reason::PrefixHit,
            }
        })
    }
}
