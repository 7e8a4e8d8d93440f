//! Black-box tests: the real application over HTTP, one file per resource or concern.

mod battery;
mod chaos_proxy;
mod cli;
mod codes;
mod connections;
mod docs_and_meta;
mod durability;
mod envelope;
mod helpers;
mod input;
mod login;
mod memory;
mod operations;
mod outage;
mod rate_limits;
mod register;
mod reset;
mod sendgrid;
mod sessions;
mod smtp;
mod text;
mod tokens;
mod users;
