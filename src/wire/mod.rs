//! The holden wire protocols: native v1 and legacy v0.2 (not yet written).
