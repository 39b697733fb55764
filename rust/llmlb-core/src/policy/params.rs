//! A policy's tunable numbers: each policy declares them ([`ParamSpec`]) next to its
//! code, and the router config holds their values ([`Params`]).

use crate::error::{CoreError, CoreResult};

/// One tunable number of a policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub default: f64,
    /// Smallest allowed value (inclusive); every value must also be finite.
    pub min: f64,
}

impl ParamSpec {
    pub const fn new(name: &'static str, default: f64, min: f64) -> Self {
        ParamSpec { name, default, min }
    }
}

/// Values of one policy's parameters, in the order of its specs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    policy: &'static str,
    specs: &'static [ParamSpec],
    values: Vec<f64>,
}

impl Params {
    pub fn defaults(policy: &'static str, specs: &'static [ParamSpec]) -> Self {
        Params {
            policy,
            specs,
            values: specs.iter().map(|s| s.default).collect(),
        }
    }

    /// The value of a parameter the policy declared.
    ///
    /// # Panics
    /// When `name` is not one of the policy's specs: a policy reading a parameter it
    /// did not declare is a bug in that policy.
    pub fn get(&self, name: &str) -> f64 {
        let i = self
            .position(name)
            .unwrap_or_else(|| panic!("policy {} has no parameter {name:?}", self.policy));
        self.values[i]
    }

    /// Sets a parameter; the value is checked by [`Params::validate`].
    pub fn set(&mut self, name: &str, value: f64) -> CoreResult<()> {
        let i = self.position(name).ok_or_else(|| self.unknown(name))?;
        self.values[i] = value;
        Ok(())
    }

    /// `(name, value)` pairs in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> + '_ {
        self.specs
            .iter()
            .map(|s| s.name)
            .zip(self.values.iter().copied())
    }

    pub fn validate(&self) -> CoreResult<()> {
        for (spec, &value) in self.specs.iter().zip(&self.values) {
            if !(value.is_finite() && value >= spec.min) {
                return Err(CoreError::InvalidConfig(format!(
                    "policies.{}.{} must be a finite number >= {}, got {value}",
                    self.policy, spec.name, spec.min
                )));
            }
        }
        Ok(())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    fn unknown(&self, name: &str) -> CoreError {
        let known: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
        let known = if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        };
        CoreError::InvalidConfig(format!(
            "policy {} has no parameter {name:?}; its parameters: {known}",
            self.policy
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[ParamSpec] = &[
        ParamSpec {
            name: "a",
            default: 1.0,
            min: 0.0,
        },
        ParamSpec {
            name: "b",
            default: 2.0,
            min: 1.0,
        },
    ];

    #[test]
    fn defaults_set_and_validate() {
        let mut params = Params::defaults("p", SPECS);
        assert_eq!(params.iter().collect::<Vec<_>>(), [("a", 1.0), ("b", 2.0)]);
        params.set("b", 0.5).unwrap();
        assert_eq!(params.get("b"), 0.5);
        let err = params.validate().unwrap_err().to_string();
        assert!(
            err.contains("policies.p.b must be a finite number >= 1"),
            "{err}"
        );
        params.set("a", f64::NAN).unwrap();
        params.set("b", 1.0).unwrap();
        assert!(params.validate().is_err());
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = Params::defaults("p", SPECS).set("c", 1.0).unwrap_err();
        assert!(err.to_string().contains("its parameters: a, b"), "{err}");
        let err = Params::defaults("q", &[]).set("c", 1.0).unwrap_err();
        assert!(err.to_string().contains("its parameters: none"), "{err}");
    }
}
