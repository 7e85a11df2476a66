//! SIP messages. (Skeleton: API contract. Being implemented.)
