//! One actor per container: holds its custody chain and decides what each weighing derives.

use custodian_events::domain::{ContainerState, WeighingRules};
use custodian_events::{ContainerId, Event};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub enum ContainerMsg {
    /// A recorded event of this container (in log order): decide, apply, and answer what it derives.
    Record {
        event: Box<Event>,
        event_seq: u64,
        reply: RpcReplyPort<Vec<Event>>,
    },
}

pub struct ContainerActor;

pub struct ContainerActorState {
    id: ContainerId,
    rules: WeighingRules,
    chain: ContainerState,
}

impl Actor for ContainerActor {
    type Msg = ContainerMsg;
    type State = ContainerActorState;
    type Arguments = (ContainerId, WeighingRules);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (id, rules): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ContainerActorState {
            id,
            rules,
            chain: ContainerState::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ContainerMsg::Record {
                event,
                event_seq,
                reply,
            } => {
                let derived = match event.as_ref() {
                    Event::ReadingRecorded(r) => {
                        state.chain.decide(&state.id, r, event_seq, &state.rules)
                    }
                    _ => Vec::new(),
                };
                state.chain.apply(&event, event_seq);
                // The caller may have given up (timeout); the events are derived again on replay.
                let _ = reply.send(derived);
            }
        }
        Ok(())
    }
}
