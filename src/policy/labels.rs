//! Policy kind `labels`: required label keys, each with an optional pattern for its value, on
//! the object and/or on its pod template. The checking is shared with `annotations` in
//! `required_keys.rs`.

use serde::Deserialize;

use super::required_keys::{Field, RequiredKeys};
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::Review;

/// `params` of a `labels` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Labels(RequiredKeys);

impl Labels {
    /// Checks the parameters and compiles the patterns.
    pub fn validate(&mut self) -> Result<(), String> {
        self.0.validate()
    }

    /// Evaluates the request's new object (DELETE and CONNECT pass).
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        self.0.evaluate(Field::Labels, policy, req)
    }
}

impl Params for Labels {
    fn validate(&mut self) -> Result<(), String> {
        Labels::validate(self)
    }
}

impl Check for Labels {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Labels::evaluate(self, ctx.policy, ctx.review))
    }
}
