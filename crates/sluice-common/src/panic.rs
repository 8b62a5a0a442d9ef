//! A panic in one statement or one operator must not take the server
//! down: [`catch_panic`] turns it into an error of that statement or that
//! operator. A panic is still a bug in Sluice, so the error is
//! [`SluiceError::Internal`] (XX000), with the panic's message.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::task::Poll;

use crate::{Result, SluiceError};

/// Runs `future`, returning an internal error naming `what` if it panics.
/// The future is not polled again after a panic.
pub async fn catch_panic<T>(what: &str, future: impl Future<Output = Result<T>>) -> Result<T> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(SluiceError::internal(format!(
                "{what} panicked: {}",
                panic_message(payload.as_ref())
            )))),
        },
    )
    .await
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: impl Future<Output = T>) -> T {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn a_panic_becomes_an_internal_error_and_values_pass_through() {
        let ok = block_on(catch_panic("statement", async { Ok(7) }));
        assert_eq!(ok.expect("no panic"), 7);
        let index = 10;
        let err = block_on(catch_panic("statement", async move {
            let v: Vec<i32> = Vec::new();
            Ok(v[index])
        }))
        .expect_err("panicked");
        assert_eq!(err.sqlstate(), "XX000");
        assert!(
            err.to_string()
                .contains("statement panicked: index out of bounds"),
            "{err}"
        );
    }
}
