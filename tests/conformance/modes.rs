//! (empty: filled by its change)
