//! Black-box tests: the real application over HTTP, one file per resource or concern.

mod account;
mod battery;
mod chaos_proxy;
mod cli;
mod codes;
mod connections;
mod corrections;
mod crash;
mod docs_and_meta;
mod durability;
mod email_change;
mod envelope;
mod export;
mod helpers;
mod input;
mod insights;
mod login;
mod memory;
mod nudges;
mod operations;
mod outage;
#[path = "../support/process.rs"]
mod process;
mod rate_limits;
mod register;
mod reset;
mod same_work;
mod sendgrid;
mod sessions;
mod smtp;
mod store_cli;
mod text;
mod tokens;
mod users;
