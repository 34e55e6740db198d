//! The OpenXR session lifecycle as a sans-IO state machine: session-state events (and the
//! user's wish to stop) in, what to call next out. The XR loop feeds it and does the calls.

/// The runtime's session states (XrSessionState) that change what the viewer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    Ready,
    Synchronized,
    Visible,
    Focused,
    Stopping,
    LossPending,
    Exiting,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The runtime or the user asked, and the session wound down in order.
    Clean,
    /// The runtime is losing the session (XR_SESSION_STATE_LOSS_PENDING).
    SessionLost,
    /// The runtime itself is going away (instance loss).
    InstanceLost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// xrBeginSession: the runtime is ready for frames.
    Begin,
    /// xrEndSession: the runtime has stopped the session.
    End,
    /// xrRequestExitSession: we want to stop while running.
    RequestExit,
    /// Leave the loop and destroy the session.
    Exit(End),
}

#[derive(Debug)]
pub struct Lifecycle {
    state: SessionState,
    running: bool,
    exit_requested: bool,
    ended: Option<End>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            state: SessionState::Idle,
            running: false,
            exit_requested: false,
            ended: None,
        }
    }
}

impl Lifecycle {
    /// A session-state event from the runtime.
    pub fn on_state(&mut self, state: SessionState) -> Option<Action> {
        self.state = state;
        match state {
            SessionState::Ready if self.exit_requested => self.exit(End::Clean),
            SessionState::Ready => {
                self.running = true;
                Some(Action::Begin)
            }
            SessionState::Stopping => {
                self.running = false;
                Some(Action::End)
            }
            SessionState::Exiting => self.exit(End::Clean),
            SessionState::LossPending => {
                self.running = false;
                self.exit(End::SessionLost)
            }
            _ => None,
        }
    }

    /// XR_TYPE_EVENT_DATA_INSTANCE_LOSS_PENDING, or a call answered XR_ERROR_INSTANCE_LOST.
    pub fn on_instance_loss(&mut self) -> Option<Action> {
        self.running = false;
        self.exit(End::InstanceLost)
    }

    /// The user (or the end of the stream) wants to stop.
    pub fn request_exit(&mut self) -> Option<Action> {
        if self.exit_requested || self.ended.is_some() {
            return None;
        }
        self.exit_requested = true;
        if self.running {
            Some(Action::RequestExit)
        } else {
            self.exit(End::Clean)
        }
    }

    fn exit(&mut self, end: End) -> Option<Action> {
        if self.ended.is_some() {
            return None;
        }
        self.ended = Some(end);
        Some(Action::Exit(end))
    }

    /// Between xrBeginSession and xrEndSession: the frame loop must run.
    pub fn running(&self) -> bool {
        self.running && self.ended.is_none()
    }

    /// Frames are shown (VISIBLE or FOCUSED).
    pub fn visible(&self) -> bool {
        matches!(self.state, SessionState::Visible | SessionState::Focused)
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn ended(&self) -> Option<End> {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::SessionState::*;
    use super::*;

    fn feed(l: &mut Lifecycle, states: &[SessionState]) -> Vec<Action> {
        states.iter().filter_map(|s| l.on_state(*s)).collect()
    }

    #[test]
    fn runtime_driven_session_begins_renders_and_ends_in_order() {
        let mut l = Lifecycle::default();
        assert_eq!(feed(&mut l, &[Idle, Ready]), [Action::Begin]);
        assert!(l.running() && !l.visible());
        assert_eq!(feed(&mut l, &[Synchronized, Visible, Focused]), []);
        assert!(l.running() && l.visible());
        // The runtime asks the session to stop (e.g. the user quit from the headset's menu).
        assert_eq!(
            feed(&mut l, &[Visible, Synchronized, Stopping]),
            [Action::End]
        );
        assert!(!l.running());
        assert_eq!(feed(&mut l, &[Idle, Exiting]), [Action::Exit(End::Clean)]);
        assert_eq!(l.ended(), Some(End::Clean));
    }

    #[test]
    fn the_user_stopping_while_running_asks_the_runtime_first() {
        let mut l = Lifecycle::default();
        feed(&mut l, &[Idle, Ready, Synchronized, Visible, Focused]);
        assert_eq!(l.request_exit(), Some(Action::RequestExit));
        assert_eq!(l.request_exit(), None, "asked once");
        assert!(
            l.running(),
            "frames go on until the runtime stops the session"
        );
        assert_eq!(
            feed(&mut l, &[Visible, Synchronized, Stopping]),
            [Action::End]
        );
        assert_eq!(feed(&mut l, &[Idle, Exiting]), [Action::Exit(End::Clean)]);
    }

    #[test]
    fn stopping_before_the_session_began_exits_at_once() {
        let mut l = Lifecycle::default();
        feed(&mut l, &[Idle]);
        assert_eq!(l.request_exit(), Some(Action::Exit(End::Clean)));
        assert_eq!(feed(&mut l, &[Ready]), [], "no begin after the end");
    }

    #[test]
    fn losses_end_the_loop_with_their_reason() {
        let mut l = Lifecycle::default();
        feed(&mut l, &[Idle, Ready, Synchronized]);
        assert_eq!(
            feed(&mut l, &[LossPending]),
            [Action::Exit(End::SessionLost)]
        );
        assert!(!l.running());
        let mut l = Lifecycle::default();
        feed(&mut l, &[Idle, Ready, Synchronized, Visible, Focused]);
        assert_eq!(l.on_instance_loss(), Some(Action::Exit(End::InstanceLost)));
        assert_eq!(l.on_instance_loss(), None);
        assert!(!l.running());
    }
}
