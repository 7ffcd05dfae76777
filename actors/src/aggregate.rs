//! One actor per aggregate (terminal, enterprise, container, manifest): it holds the aggregate's state,
//! decides what each routed event derives, applies the event, and answers with the derived events and
//! the aggregate's next clock deadline.

use std::fmt;
use std::sync::Arc;

use custodian_events::Event;
use custodian_events::domain::{AggregateKey, AggregateState, At, Rules};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

/// A fault to inject (tests, simulation): the actor of `key` panics while handling the event at a log
/// sequence for which the function answers true.
#[derive(Clone)]
pub struct Fault(pub Arc<FaultFn>);

/// Whether the actor of a key panics at a log sequence.
pub type FaultFn = dyn Fn(&AggregateKey, u64) -> bool + Send + Sync;

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fault(..)")
    }
}

/// What an aggregate answers for one event.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub derived: Vec<Event>,
    pub deadline_ns: Option<i64>,
}

pub enum AggregateMsg {
    /// A logged event routed here (in log order): decide, apply, and answer.
    Record {
        event: Arc<Event>,
        at: At,
        reply: RpcReplyPort<Answer>,
    },
    /// The state, encoded, for a snapshot or before passivation.
    Snapshot { reply: RpcReplyPort<Vec<u8>> },
}

pub struct AggregateActor;

pub struct AggregateArgs {
    pub state: AggregateState,
    pub rules: Arc<Rules>,
    pub fault: Option<Fault>,
}

pub struct Running {
    state: AggregateState,
    rules: Arc<Rules>,
    fault: Option<Fault>,
}

impl Actor for AggregateActor {
    type Msg = AggregateMsg;
    type State = Running;
    type Arguments = AggregateArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Running {
            state: args.state,
            rules: args.rules,
            fault: args.fault,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        run: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregateMsg::Record { event, at, reply } => {
                if let Some(fault) = &run.fault
                    && (fault.0)(&run.state.key, at.seq)
                {
                    panic!("injected fault in {} at seq {}", run.state.key, at.seq);
                }
                let derived = run.state.step(&run.rules, &event, at);
                let deadline_ns = run.state.deadline_ns(&run.rules);
                // The caller may have given up; the events are derived again on recovery.
                let _ = reply.send(Answer {
                    derived,
                    deadline_ns,
                });
            }
            AggregateMsg::Snapshot { reply } => {
                let _ = reply.send(run.state.to_bytes());
            }
        }
        Ok(())
    }
}
