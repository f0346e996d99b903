//! The `Model` and `ModelDeployment` reconcilers.
