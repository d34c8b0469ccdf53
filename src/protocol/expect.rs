//! The responses a server connection still owes, in order, for transaction
//! pooling with prepared statements. The proxy sometimes sends a message the
//! client did not (a Parse before a Bind on a connection that lacks the
//! statement, a Close to evict one), and sometimes answers a client message
//! itself (a Parse of a statement the connection already has, a Close of a
//! client's statement): this queue says which server responses to drop, where
//! to insert the proxy's own, and when the connection owes nothing.
//!
//! Follows the protocol's rules: each request completes on a known response;
//! after an ErrorResponse in the extended protocol the server skips every
//! message up to the next Sync, and so does this queue.

use std::collections::VecDeque;

/// A request whose responses pass to the client unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Parse of the unnamed statement.
    Parse,
    /// Bind.
    Bind,
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// Describe of a portal.
    DescribePortal,
    /// Execute.
    Execute,
    /// Close of a portal.
    Close,
    /// Sync.
    Sync,
    /// Simple Query.
    Query,
    /// FunctionCall.
    FunctionCall,
}

/// One owed response (or group of responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The client's own request.
    Pass(Request),
    /// A Parse the client sent, renamed; on failure statement `id` is not on the server.
    ClientParse(u64),
    /// A Parse the proxy added for statement `id`: its ParseComplete is dropped.
    InjectedParse(u64),
    /// A Close the proxy added to evict a statement: its CloseComplete is dropped.
    InjectedClose,
    /// A response the proxy gives itself, in order: ParseComplete or CloseComplete.
    Synthetic(u8),
}

/// ParseComplete's tag.
pub const PARSE_COMPLETE: u8 = b'1';
/// CloseComplete's tag.
pub const CLOSE_COMPLETE: u8 = b'3';

/// The queue of owed responses of one server connection.
#[derive(Debug, Default)]
pub struct Expectations {
    queue: VecDeque<Expect>,
    /// An error happened and no Sync has been queued since: the server skips messages.
    skipping: bool,
    /// Statements whose Parse failed or was skipped, for the caller to forget.
    forgotten: Vec<u64>,
    /// Statements whose Parse a server accepted.
    confirmed: Vec<u64>,
}

impl Expectations {
    /// Queues what a message sent to the server owes. Messages the server will
    /// skip (after an error, before the next Sync) are not queued.
    pub fn push(&mut self, e: Expect) {
        if self.skipping {
            if e == Expect::Pass(Request::Sync) {
                self.skipping = false;
            } else {
                self.forget(e);
                return;
            }
        }
        self.queue.push_back(e);
    }

    /// Forgets everything (the connection it described is gone).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.skipping = false;
        self.forgotten.clear();
        self.confirmed.clear();
    }

    /// Nothing owed: the connection may serve someone else.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.skipping
    }

    /// Statement ids to forget, collected since the last call.
    pub fn take_forgotten(&mut self) -> std::vec::Drain<'_, u64> {
        self.forgotten.drain(..)
    }

    /// Statement ids a server accepted, collected since the last call.
    pub fn take_confirmed(&mut self) -> std::vec::Drain<'_, u64> {
        self.confirmed.drain(..)
    }

    /// Whether a synthetic response is queued anywhere (due now or later).
    pub fn owes_synthetic(&self) -> bool {
        self.queue.iter().any(|e| matches!(e, Expect::Synthetic(_)))
    }

    /// Pops a synthetic response due now, if the front of the queue is one.
    pub fn next_synthetic(&mut self) -> Option<u8> {
        match self.queue.front() {
            Some(Expect::Synthetic(tag)) => {
                let tag = *tag;
                self.queue.pop_front();
                Some(tag)
            }
            _ => None,
        }
    }

    /// Accounts for one response from the server; returns whether the client gets it.
    pub fn on_response(&mut self, tag: u8) -> bool {
        let Some(&front) = self.queue.front() else {
            return true;
        };
        if tag == b'E' {
            return self.on_error(front);
        }
        let completes = match front {
            Expect::Pass(Request::Parse) | Expect::ClientParse(_) | Expect::InjectedParse(_) => {
                tag == PARSE_COMPLETE
            }
            Expect::Pass(Request::Bind) => tag == b'2',
            Expect::Pass(Request::DescribeStatement | Request::DescribePortal) => {
                matches!(tag, b'T' | b'n')
            }
            Expect::Pass(Request::Execute) => matches!(tag, b'C' | b'I' | b's'),
            Expect::Pass(Request::Close) | Expect::InjectedClose => tag == CLOSE_COMPLETE,
            Expect::Pass(Request::Sync | Request::Query | Request::FunctionCall) => tag == b'Z',
            // Synthetic entries are emitted before the server's next response.
            Expect::Synthetic(_) => false,
        };
        if !completes {
            return true;
        }
        self.queue.pop_front();
        if let Expect::ClientParse(id) | Expect::InjectedParse(id) = front {
            self.confirmed.push(id);
        }
        !matches!(front, Expect::InjectedParse(_) | Expect::InjectedClose)
    }

    fn on_error(&mut self, front: Expect) -> bool {
        if matches!(
            front,
            Expect::Pass(Request::Sync | Request::Query | Request::FunctionCall)
        ) {
            // Errors inside a simple query or at commit end with ReadyForQuery.
            return true;
        }
        self.queue.pop_front();
        self.forget(front);
        // The server now skips everything up to the next Sync.
        while let Some(&next) = self.queue.front() {
            if next == Expect::Pass(Request::Sync) {
                return true;
            }
            self.queue.pop_front();
            self.forget(next);
        }
        self.skipping = true;
        true
    }

    fn forget(&mut self, e: Expect) {
        if let Expect::ClientParse(id) | Expect::InjectedParse(id) = e {
            self.forgotten.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_injected_and_inserts_synthetic_in_order() {
        let mut q = Expectations::default();
        q.push(Expect::Synthetic(PARSE_COMPLETE)); // client Parse answered by the proxy
        q.push(Expect::InjectedParse(7));
        q.push(Expect::Pass(Request::Bind));
        q.push(Expect::Pass(Request::Execute));
        q.push(Expect::Pass(Request::Sync));
        assert!(q.owes_synthetic());
        assert_eq!(q.next_synthetic(), Some(PARSE_COMPLETE));
        assert_eq!(q.next_synthetic(), None);
        assert!(!q.owes_synthetic());
        assert!(
            !q.on_response(b'1'),
            "the injected Parse's reply is dropped"
        );
        assert!(q.on_response(b'2'));
        assert!(q.on_response(b'D'));
        assert!(q.on_response(b'C'));
        assert!(!q.is_idle());
        assert!(q.on_response(b'Z'));
        assert!(q.is_idle());
        assert_eq!(q.take_forgotten().count(), 0);
        assert_eq!(q.take_confirmed().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn an_error_skips_to_sync_and_forgets_statements() {
        let mut q = Expectations::default();
        q.push(Expect::ClientParse(1));
        q.push(Expect::InjectedParse(2));
        q.push(Expect::Synthetic(PARSE_COMPLETE));
        q.push(Expect::Pass(Request::Bind));
        q.push(Expect::Pass(Request::Sync));
        assert!(q.on_response(b'E'));
        assert_eq!(q.take_forgotten().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(q.next_synthetic(), None, "skipped, as the server would");
        assert!(q.on_response(b'Z'));
        assert!(q.is_idle());
    }

    #[test]
    fn messages_after_an_error_are_skipped_until_sync() {
        let mut q = Expectations::default();
        q.push(Expect::Pass(Request::Bind));
        assert!(q.on_response(b'E'));
        assert!(!q.is_idle());
        q.push(Expect::InjectedParse(9));
        q.push(Expect::Pass(Request::Execute));
        assert_eq!(q.take_forgotten().collect::<Vec<_>>(), vec![9]);
        q.push(Expect::Pass(Request::Sync));
        assert!(q.on_response(b'Z'));
        assert!(q.is_idle());
    }

    #[test]
    fn describe_and_query_complete_on_their_last_response() {
        let mut q = Expectations::default();
        q.push(Expect::Pass(Request::DescribeStatement));
        q.push(Expect::Pass(Request::Query));
        assert!(q.on_response(b't'));
        assert!(q.on_response(b'T'));
        assert!(q.on_response(b'T'));
        assert!(
            q.on_response(b'E'),
            "an error inside a query is the client's"
        );
        assert!(!q.is_idle());
        assert!(q.on_response(b'Z'));
        assert!(q.is_idle());
        assert!(q.on_response(b'N'), "notices pass when nothing is owed");
    }
}
