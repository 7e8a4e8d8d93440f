//! Black-box tests: the real application over HTTP, one file per resource or concern.

mod battery;
mod cli;
mod codes;
mod connections;
mod docs_and_meta;
mod envelope;
mod helpers;
mod input;
mod login;
mod memory;
mod operations;
mod rate_limits;
mod register;
mod reset;
mod same_work;
mod sendgrid;
mod sessions;
mod smtp;
mod text;
mod tokens;
mod users;
