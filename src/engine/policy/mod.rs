//! Per-tenant filtering policy: what a message's findings mean for it. The schema (named
//! policies `[policy.NAME]`, tenant overrides, lists) is `config::policy`; the scanner compiles
//! it once per snapshot (`scan::compile`); this module decides.
//!
//! | file | owns |
//! |---|---|
//! | `finding` | findings, their categories and built-in scores, scanner errors |
//! | `lists` | allow/block lists: policy, tenant and user level; users' own (webmail) lists |
//! | `decide` | findings + failures + list hit -> a [`Decision`] with its [`Disposition`] |
//!
//! Nothing here reaches into the scanner: findings come in as values, a decision goes out.

mod decide;
pub mod finding;
mod lists;

pub use decide::{Decision, Disposition, Failure, Grounds, decide};
pub use lists::{Entry, ListHit, Lists, USERS_ALLOW, users_allow};
