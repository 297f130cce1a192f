//! Policy kind `annotations`: required annotation keys, each with an optional pattern for its
//! value, on the object and/or on its pod template. The checking is shared with `labels` in
//! `required_keys.rs`.

use serde::Deserialize;

use super::required_keys::{Field, RequiredKeys};
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::Review;

/// `params` of an `annotations` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct Annotations(RequiredKeys);

impl Annotations {
    /// Checks the parameters and compiles the patterns.
    pub fn validate(&mut self) -> Result<(), String> {
        self.0.validate()
    }

    /// Evaluates the request's new object (DELETE and CONNECT pass).
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        self.0.evaluate(Field::Annotations, policy, req)
    }
}

impl Params for Annotations {
    fn validate(&mut self) -> Result<(), String> {
        Annotations::validate(self)
    }
}

impl Check for Annotations {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Annotations::evaluate(self, ctx.policy, ctx.review))
    }
}
