//! The configuration file and the service specification (not yet written).
