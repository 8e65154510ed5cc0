"""Admin tooling: broker configuration now; keys, certificates, enrollment and revocation to come."""
