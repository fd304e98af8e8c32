//! The sans-IO supervision core (not yet written).
