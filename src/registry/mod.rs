//! OCI registry access: references, credentials, resolution of tags and semver ranges to digests.
