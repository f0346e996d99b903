//! Signature verification: Notary Project (notation) and cosign.
