//! One actor per terminal: the terminal's own rules (so far `tamper_suspected`).

use custodian_events::domain::TerminalState;
use custodian_events::{Event, TerminalId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub enum TerminalMsg {
    /// A recorded event of this terminal (in log order): decide, apply, and answer what it derives.
    Record {
        event: Box<Event>,
        event_seq: u64,
        reply: RpcReplyPort<Vec<Event>>,
    },
}

pub struct TerminalActor;

pub struct TerminalActorState {
    id: TerminalId,
    rules: TerminalState,
}

impl Actor for TerminalActor {
    type Msg = TerminalMsg;
    type State = TerminalActorState;
    type Arguments = TerminalId;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        id: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(TerminalActorState {
            id,
            rules: TerminalState::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let TerminalMsg::Record {
            event,
            event_seq,
            reply,
        } = msg;
        let derived = state.rules.decide(&state.id, &event, event_seq);
        state.rules.apply(&event);
        let _ = reply.send(derived);
        Ok(())
    }
}
