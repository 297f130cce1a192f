//! Loopback stand-ins for the services notifications go to, and a log capture.
#![allow(dead_code)]

pub mod chat;
pub mod logs;
pub mod twilio;
