//! RFC 3261 §17 transactions. (Skeleton: API contract. Being implemented.)
