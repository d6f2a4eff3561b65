//! End-to-end tests: the real server on an ephemeral port. One test binary
//! (modules below) keeps link times short.

mod admin;
mod bad_input;
mod batch;
mod concurrency;
mod connections;
mod delayed_labels;
mod deploy;
mod durability;
mod faults;
mod guard;
mod hardening;
mod helpers;
mod hostile;
mod learning;
mod lifecycle;
mod limits;
mod memory;
mod mlp;
mod models;
mod openapi;
mod overload;
mod progressive;
mod published;
mod restart;
mod safety;
mod sources;
mod status;
mod streams;
mod tidy;
