//! modelpack-operator: resolves, verifies and pre-pulls CNCF ModelPack artifacts onto Kubernetes
//! nodes. The modules mirror the pipeline: `api` (CRDs) → `registry` (resolve) → `modelpack`
//! (inspect) → `verify` → `cache` (node-local pull) → `controller` (reconcilers).

pub mod api;
pub mod cache;
pub mod chain;
pub mod controller;
pub mod exit;
pub mod modelpack;
pub mod policy;
pub mod printable;
pub mod registry;
pub mod verify;
