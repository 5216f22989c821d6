//! The in-flight limit of [`KubeStore`](super::KubeStore), with a priority lane.
//!
//! Leases acquired together renew together, so a process with many leases sends its calls in
//! bursts; the limit keeps a burst from reaching the API server's own in-flight limits (HTTP
//! 429). But a plain limit serves calls in arrival order, and when a slow server makes calls
//! queue, a holder's renewal can wait behind a crowd of acquisitions (campaigns, takeovers after
//! a crash) until its renew deadline passes: the slow server then costs terms, which sends more
//! replicas campaigning, which lengthens the queue. So the limit has two lanes, and a free
//! place goes to the [`Lane::Urgent`] queue first (rule `renewals-first`): renewals and releases keep a live term alive
//! or hand a lease over, and they are never kept waiting by calls that could only start one.
//!
//! Within a lane calls are served first come, first served. A call that gives up while waiting
//! (its timeout, or its caller went away) leaves its place, and a place handed to it at that very
//! moment is passed on, never lost.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// Which queue a call waits in when every place is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Calls that keep a live term (a renewal) or end one (a release): served first.
    Urgent,
    /// Everything else: reads, lists, acquisitions.
    Normal,
}

/// A limit of `n` calls in flight with two queues (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Places nobody holds or has been handed.
    free: usize,
    urgent: VecDeque<oneshot::Sender<()>>,
    normal: VecDeque<oneshot::Sender<()>>,
}

impl Limiter {
    /// A limit of `limit` calls (at least one).
    pub(crate) fn new(limit: usize) -> Arc<Limiter> {
        let limit = limit.max(1);
        Arc::new(Limiter {
            limit,
            state: Mutex::new(State {
                free: limit,
                urgent: VecDeque::new(),
                normal: VecDeque::new(),
            }),
        })
    }

    /// The limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a place in `lane`; the place is held until the [`Place`] is dropped.
    pub(crate) fn enter(self: &Arc<Self>, lane: Lane) -> Enter {
        let mut state = self.state();
        // A free place with nobody queued: no one to pass (a place is only ever free while
        // both queues are empty, since a leaving call hands its place to the head of a queue).
        if state.free > 0 {
            state.free -= 1;
            return Enter {
                limiter: self.clone(),
                state: Entering::Holding,
            };
        }
        let (tx, rx) = oneshot::channel();
        match lane {
            Lane::Urgent => state.urgent.push_back(tx),
            Lane::Normal => state.normal.push_back(tx),
        }
        Enter {
            limiter: self.clone(),
            state: Entering::Queued(rx),
        }
    }

    /// Gives a place back: to the first live waiter of the urgent queue, else of the normal
    /// one, else it becomes free.
    fn leave(&self) {
        let mut state = self.state();
        loop {
            let next = match state.urgent.pop_front() {
                Some(next) => next,
                None => match state.normal.pop_front() {
                    Some(next) => next,
                    None => {
                        state.free += 1;
                        return;
                    }
                },
            };
            // A waiter that went away dropped its receiver: try the next one.
            if next.send(()).is_ok() {
                return;
            }
        }
    }

    /// Calls queued in each lane (urgent, normal), including any that already gave up but have
    /// not been passed over yet.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let state = self.state();
        (state.urgent.len(), state.normal.len())
    }
}

/// The future of [`Limiter::enter`].
#[derive(Debug)]
pub(crate) struct Enter {
    limiter: Arc<Limiter>,
    state: Entering,
}

/// Where an [`Enter`] stands.
#[derive(Debug)]
enum Entering {
    /// A place is ours (it was free) but has not moved into a [`Place`] yet.
    Holding,
    /// Queued; the place comes through the channel.
    Queued(oneshot::Receiver<()>),
    /// The place moved into a [`Place`]: this future owns nothing.
    Done,
}

impl Future for Enter {
    type Output = Place;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Place> {
        if let Entering::Queued(rx) = &mut self.state {
            if Pin::new(rx).poll(cx).is_pending() {
                return Poll::Pending;
            }
            // A sender is only dropped after its send succeeded (`leave` pops it first), and a
            // limiter's queues are never dropped while an `Enter` holds the limiter: an answer
            // is always a handed place.
        }
        self.state = Entering::Done;
        Poll::Ready(Place {
            limiter: self.limiter.clone(),
        })
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        match &mut self.state {
            // Got a place at once but never polled: give it back.
            Entering::Holding => self.limiter.leave(),
            // Given up while queued: a place handed over in the meantime is passed on.
            Entering::Queued(rx) => {
                rx.close();
                if rx.try_recv().is_ok() {
                    self.limiter.leave();
                }
            }
            Entering::Done => {}
        }
    }
}

/// A place in flight, given back on drop.
#[derive(Debug)]
pub(crate) struct Place {
    limiter: Arc<Limiter>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.limiter.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn places_are_free_up_to_the_limit() {
        let limiter = Limiter::new(2);
        let a = limiter.enter(Lane::Normal).now_or_never().expect("free");
        let _b = limiter.enter(Lane::Normal).now_or_never().expect("free");
        let mut c = limiter.enter(Lane::Normal);
        assert!((&mut c).now_or_never().is_none(), "the limit is 2");
        drop(a);
        assert!(c.now_or_never().is_some(), "a's place went to c");
    }

    #[test]
    fn renewals_first_a_freed_place_goes_to_the_urgent_lane() {
        let limiter = Limiter::new(1);
        let held = limiter.enter(Lane::Normal).now_or_never().expect("free");
        let mut normal = limiter.enter(Lane::Normal);
        let mut urgent = limiter.enter(Lane::Urgent);
        assert_eq!(limiter.queued(), (1, 1));
        assert!((&mut normal).now_or_never().is_none());
        drop(held);
        let place = (&mut urgent)
            .now_or_never()
            .expect("the renewal, queued last, goes first");
        assert!((&mut normal).now_or_never().is_none(), "still waiting");
        drop(place);
        assert!(normal.now_or_never().is_some(), "then the acquisition");
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_its_place_to_the_next() {
        let limiter = Limiter::new(1);
        let held = limiter.enter(Lane::Normal).now_or_never().expect("free");
        let mut gone = limiter.enter(Lane::Urgent);
        assert!((&mut gone).now_or_never().is_none());
        let mut next = limiter.enter(Lane::Normal);
        drop(gone); // its timeout fired
        drop(held);
        assert!(
            (&mut next).now_or_never().is_some(),
            "passed over the gone waiter"
        );
        assert_eq!(limiter.queued(), (0, 0));
    }

    #[test]
    fn a_place_handed_to_a_waiter_that_then_gives_up_is_passed_on() {
        let limiter = Limiter::new(1);
        let held = limiter.enter(Lane::Normal).now_or_never().expect("free");
        let gone = limiter.enter(Lane::Urgent);
        let mut next = limiter.enter(Lane::Normal);
        drop(held); // handed to `gone`, which has not been polled since
        assert!((&mut next).now_or_never().is_none(), "it is gone's");
        drop(gone); // its timeout fired at that very moment
        assert!(next.now_or_never().is_some(), "not lost: passed on");
    }

    #[test]
    fn a_place_taken_but_never_polled_is_given_back() {
        let limiter = Limiter::new(1);
        drop(limiter.enter(Lane::Normal));
        let place = limiter.enter(Lane::Normal).now_or_never();
        assert!(place.is_some(), "the limit is whole again");
    }

    #[test]
    fn places_given_back_restore_the_limit() {
        let limiter = Limiter::new(3);
        let places: Vec<Place> = (0..3)
            .map(|_| limiter.enter(Lane::Urgent).now_or_never().expect("free"))
            .collect();
        drop(places);
        let again: Vec<Place> = (0..3)
            .map(|_| {
                limiter
                    .enter(Lane::Normal)
                    .now_or_never()
                    .expect("free again")
            })
            .collect();
        assert_eq!(again.len(), limiter.limit());
        assert!(limiter.enter(Lane::Urgent).now_or_never().is_none());
    }
}
