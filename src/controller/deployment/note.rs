//! An event the plan announces about a deployment (or one of its workloads).

use crate::api::conditions::Reason;

/// One event: Warning or Normal, its reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}
