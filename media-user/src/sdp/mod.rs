//! SDP: read what the session layer needs from an endpoint's SDP, and
//! rewrite it so media goes through the relay — losslessly for everything
//! not touched. (Skeleton: API contract. Being implemented.)
