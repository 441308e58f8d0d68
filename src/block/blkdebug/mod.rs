//! The blkdebug filter: rule-driven error injection and breakpoints.

pub mod config;
pub mod events;
pub mod limits;
pub mod rules;
