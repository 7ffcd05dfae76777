//! The supervisor of the aggregate actors: every aggregate actor is linked to it, so a panic in one is
//! contained there and reported here instead of taking the deriver down. The deriver notices the lost
//! answer and recovers the aggregate (snapshot plus log replay) into a new actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

pub struct Supervisor;

/// What the supervisor has seen.
#[derive(Debug, Default)]
pub struct SupervisorStats {
    /// Aggregate actors that failed (panicked).
    pub failures: AtomicU64,
}

impl Actor for Supervisor {
    type Msg = ();
    type State = Arc<SupervisorStats>;
    type Arguments = Arc<SupervisorStats>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        stats: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(stats)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        stats: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Ractor's default would stop the supervisor with its child; here a child's failure is its own.
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(actor = ?cell.get_id(), %error, "aggregate actor failed; the deriver recovers it from its snapshot and the log");
        }
        Ok(())
    }
}
