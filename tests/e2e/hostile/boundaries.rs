//! Claims cannot move between servers, access ends with admission, every
//! derived name fits, children are never shared, and status tells the truth.
