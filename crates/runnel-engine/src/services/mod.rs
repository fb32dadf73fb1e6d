//! The timed jobs, one module each; [`crate::runtime`] drives them.
//!
//! Each is a small [`TimedService`](crate::runtime::TimedService) over the engine: a
//! `next_due` that reads one deadline column and a `run_once` that moves one batch with
//! conditional updates. Adding a timed job is a new module here plus one line in
//! [`Engine::run_services`](crate::Engine::run_services).

pub mod expirer;
pub mod promoter;
pub mod requeuer;
pub mod rescuer;
pub mod scheduler;
pub mod waiter;

pub use expirer::Expirer;
pub use promoter::Promoter;
pub use requeuer::Requeuer;
pub use rescuer::Rescuer;
pub use scheduler::Scheduler;
pub use waiter::Waiter;
