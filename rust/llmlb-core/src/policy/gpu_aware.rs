//! `gpu_aware` (R3): `least_request` with a penalty that grows with SM, memory-bandwidth
//! and PCIe pressure (saturated nodes are already skipped when candidates are built).

use super::{Choice, Decision, ParamSpec, Policy, Reason, Registration};
use crate::scoring::{argmin_score, gpu_pressure, least_request_cost, mean_memory_pressure};

/// How much a fully pressured GPU multiplies a node's cost (`1 + scale * pressure`).
const PRESSURE_SCALE: &str = "pressure_scale";

pub(super) const REGISTRATION: Registration = Registration {
    name: "gpu_aware",
    params: &[ParamSpec::new(PRESSURE_SCALE, 2.0, 0.0)],
    build: |_| Box::new(GpuAware),
};

#[derive(Debug)]
struct GpuAware;

impl Policy for GpuAware {
    fn choose(&self, decision: Decision<'_, '_>) -> Option<Choice> {
        let Decision {
            candidates,
            request,
            params,
        } = decision;
        let scale = params.get(PRESSURE_SCALE);
        let mean_pressure = mean_memory_pressure(candidates);
        for c in candidates.iter_mut().filter(|c| c.eligible()) {
            let penalty = 1.0 + scale * gpu_pressure(c, request.decode_share);
            c.score = Some(least_request_cost(c, mean_pressure) * penalty);
        }
        argmin_score(candidates).map(|index| Choice {
            index,
            reason: Reason::GpuAware,
        })
    }
}
